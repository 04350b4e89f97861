"""Filter banks against slow references: scipy convolution for Gabor, torchvision's own modules for conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage

from services.errors import WeightsError
from services.filters import build_bank, conv_spec, fft_size, gabor_kernels
from services.spec import GaborParams, gabor_spec
from tests.imagegen import stripes

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("size", [32, 40])
def test_gabor_fft_equals_direct_mirror_convolution(size):
    """Size 32 is smaller than the 69 px kernel: the mirror extension must repeat like scipy's."""
    spec = gabor_spec(size=size)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    (resp,) = build_bank(spec)(image[None])
    assert resp.shape == (1, 48, size, size) and resp.dtype == torch.float32
    lum = image.astype(np.float64) @ LUMA / 255.0
    kernels = gabor_kernels(spec.gabor)
    for s, per_scale in enumerate(kernels):
        for f in (0, 1, 5, 10):  # real/imag at 0 deg, imag at 60, real at 150: a direct 69 px conv is slow
            ref = ndimage.convolve(lum, per_scale[f].numpy(), mode="mirror")
            np.testing.assert_allclose(resp[0, s * 12 + f].numpy(), ref, atol=2e-5)


def test_kernels_are_zero_mean_and_even_odd():
    for per_scale in gabor_kernels(gabor_spec().gabor):
        assert torch.allclose(
            per_scale.sum(dim=(-1, -2)), torch.zeros(per_scale.shape[0], dtype=per_scale.dtype), atol=1e-9
        )
        real, imag = per_scale[0::2], per_scale[1::2]
        assert torch.allclose(real, real.flip(-1, -2)) and torch.allclose(imag, -imag.flip(-1, -2))


def energy(spec, image_gray: np.ndarray) -> np.ndarray:
    """Mean squared response (real^2 + imag^2) per (scale, orientation): (4, 6)."""
    rgb = np.repeat((image_gray * 255).round().astype(np.uint8)[None, ..., None], 3, axis=-1)
    (resp,) = build_bank(spec)(rgb)
    margin = 12  # away from the mirrored border, where a grating is bent
    power = resp[0, :, margin:-margin, margin:-margin].pow(2).mean(dim=(-1, -2)).view(4, 6, 2).sum(-1)
    return power.numpy()


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 120, 150])
@pytest.mark.parametrize("scale", [1, 2])
def test_stripes_excite_their_orientation_and_scale(angle, scale):
    spec = gabor_spec(size=64)
    wavelength = spec.gabor.wavelengths[scale]
    power = energy(spec, stripes(64, wavelength, angle, phase=0.3))
    assert int(np.argmax(power[scale])) == angle // 30, power[scale]
    assert int(np.argmax(power[:, angle // 30])) == scale, power[:, angle // 30]


def test_layouts_and_dtypes_agree():
    spec = gabor_spec(size=32)
    bank = build_bank(spec)
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    nhwc = bank(images)[0]
    nchw = bank(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)[0]
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expected"):
        bank(images[:, :16, :16])


def reference_stem(weights_path, images: np.ndarray):
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        first = model.conv1(x)
        return first, model.layer1[0].conv1(model.maxpool(model.relu(model.bn1(first))))


def test_conv_bank_matches_the_network_pre_activation(resnet18_weights):
    spec = conv_spec(resnet18_weights, arch="resnet18", layers=2, size=32)
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first, second = build_bank(spec, conv_weights=resnet18_weights)(images)
    ref_first, ref_second = reference_stem(resnet18_weights, images)
    torch.testing.assert_close(first, ref_first)
    torch.testing.assert_close(second, ref_second)
    assert (first < 0).any(), "pre-activation responses keep their negative part"


def test_conv_bank_accepts_wrapped_state_dicts(resnet18_weights, tmp_path):
    wrapped = tmp_path / "ckpt.pt"
    state = torch.load(resnet18_weights, weights_only=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    spec = conv_spec(wrapped, arch="resnet18", size=32)
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    (resp,) = build_bank(spec, conv_weights=wrapped)(images)
    torch.testing.assert_close(resp, reference_stem(resnet18_weights, images)[0])


def test_conv_bank_refuses_missing_or_other_weights(resnet18_weights, tmp_path):
    spec = conv_spec(resnet18_weights, arch="resnet18", size=32)
    with pytest.raises(WeightsError, match="needs a local weights file"):
        build_bank(spec)
    with pytest.raises(WeightsError, match="not found"):
        build_bank(spec, conv_weights=tmp_path / "nope.pt")
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(WeightsError, match="sha256"):
        build_bank(spec, conv_weights=other)


@pytest.mark.parametrize("size", [64, 50])
def test_decimated_blocks_are_the_responses_on_the_grid(size):
    """Cropping the spectrum to the central band = the full-resolution response at every d-th pixel (the
    grid centred in the image), up to the kernel's spectral tail beyond the coarse grid's Nyquist limit
    (measured 2-3e-4 of the peak; e^-8 = 3.4e-4 by the 4-sigma rule). Size 50: a grid that does not divide."""
    params = GaborParams(zero_below=0.0)
    assert params.decimation == [1, 1, 2, 4]
    rng = np.random.default_rng(4)
    gray = (
        0.5
        + 0.2 * stripes(size, 20.0, 30.0)
        + 0.15 * stripes(size, 10.0, 100.0)
        + 0.05 * rng.random((size, size))
    )
    image = np.repeat((gray * 255).round().astype(np.uint8)[None, ..., None], 3, axis=-1)
    bank = build_bank(gabor_spec(size=size, params=params))
    (full,) = bank(image)  # (1, 48, S, S)
    seen = set()
    for _, ids, values in bank.blocks(image, sampled=True):
        scale = int(ids.min()) // 12
        d = params.decimation[scale]
        h = -(-size // d)
        offset = (size - 1 - d * (h - 1)) // 2
        got = bank.filters_first(values)[0]  # (12, h, h)
        want = full[0, scale * 12 : (scale + 1) * 12, offset::d, offset::d]
        assert got.shape == want.shape == (12, h, h)
        peak = want.abs().max().item()
        assert peak > 1e-2  # the image excites every scale
        assert (got - want).abs().max().item() < 1e-3 * peak, (scale, (got - want).abs().max().item(), peak)
        seen.add(scale)
    assert seen == {0, 1, 2, 3}


def test_fft_sizes_are_fast_lengths():
    assert [fft_size(n) for n in (1, 7, 129, 234, 242, 257, 300)] == [1, 8, 160, 256, 256, 320, 320]
