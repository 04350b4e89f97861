"""Filter banks: image batches -> per-layer filter responses (torch, CPU or CUDA).

``GaborBank`` convolves the luminance with the spec's Gabor kernels by FFT ('same' size, mirror padding: see
``GaborParams``); ``ConvBank`` runs the first (and second) conv layer of a torchvision or timm CNN from a
local state dict and returns pre-activation responses. Both take uint8 (N, S, S, 3) / (N, 3, S, S) or float
in [0, 1].
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.errors import WeightsError
from services.fileio import file_sha256
from services.luminance import COMPILED as LUMINANCE_COMPILED
from services.luminance import luminance as compiled_luminance
from services.luminance import mirror_pad
from services.spec import ConvParams, DescriptorSpec, GaborParams, layer_weights
from services.weights import IMAGENET_MEAN, IMAGENET_STD, load_state_dict, load_weights


def gabor_kernels(params: GaborParams) -> list[torch.Tensor]:
    """Spatial kernels per scale: float64 (2 * orientations, K_s, K_s), rows (real, imag) per orientation."""
    kernels = []
    for wavelength, sigma, ksize in zip(params.wavelengths, params.sigmas, params.kernel_sizes, strict=True):
        half = ksize // 2
        y, x = torch.meshgrid(
            torch.arange(-half, half + 1, dtype=torch.float64),
            torch.arange(-half, half + 1, dtype=torch.float64),
            indexing="ij",
        )
        per_scale = []
        for o in range(params.orientations):
            theta = math.pi * o / params.orientations
            along = x * math.cos(theta) + y * math.sin(theta)  # along the wave vector
            across = -x * math.sin(theta) + y * math.cos(theta)  # along the stripes
            envelope = torch.exp(-(along**2 + (params.aspect_ratio * across) ** 2) / (2.0 * sigma**2))
            real = envelope * torch.cos(2.0 * math.pi * along / wavelength)
            imag = envelope * torch.sin(2.0 * math.pi * along / wavelength)
            if params.zero_mean:
                # Remove the DC with the envelope's shape (not a flat offset) so the kernel stays local.
                real = real - envelope * (real.sum() / envelope.sum())
                imag = imag - envelope * (imag.sum() / envelope.sum())
            per_scale += [real / envelope.sum(), imag / envelope.sum()]
        kernels.append(torch.stack(per_scale))
    return kernels


def fft_size(n: int) -> int:
    """Smallest m >= n of the form 2^k, 3 * 2^k or 5 * 2^k, lengths MKL transforms fast. 12 complex 2-D
    inverse FFTs, 1 thread, 2-core machine (noisy, +-30 %): 240^2 4.8 ms, 243^2 16.1, 250^2 8.0,
    256^2 5.1-6.7, 270^2 9.8, 288^2 9.6, 300^2 7.1, 320^2 8.7 (2/3/5-smooth sizes gave 243 and 270)."""
    best = n * 8
    for odd in (1, 3, 5):
        m = odd
        while m < n:
            m *= 2
        best = min(best, m)
    return best


def mirror_indices(size: int, before: int, total: int) -> torch.Tensor:
    """Indices of a mirror-padded axis (edge pixel not repeated; any pad width): scipy ``mode='mirror'``."""
    idx = np.arange(-before, total - before)
    if size == 1:
        return torch.zeros(total, dtype=torch.long)
    period = 2 * size - 2
    idx = np.mod(idx, period)
    idx = np.where(idx >= size, period - idx, idx)
    return torch.from_numpy(idx.astype(np.int64))


def as_nchw_float(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) batch, NHWC (last dim 3) or NCHW -> float32 (N, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or (x.shape[-1] != 3 and x.shape[1] != 3):
        raise ValueError(f"expected an image batch (N, S, S, 3) or (N, 3, S, S), got shape {tuple(x.shape)}")
    x = x.to(device)
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-thread reusable buffer: writing into warm memory instead of a fresh allocation (page faults)
    halves the cost of the elementwise passes here; per thread, so concurrent callers never share one."""
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    # Inference tensors cannot be written outside inference mode (and vice versa for autograd): one each.
    key = (name, shape, dtype, str(device), torch.is_inference_mode_enabled())
    if key not in cache:
        if len(cache) > 64:  # many shapes (odd batch sizes): start over rather than grow without bound
            cache.clear()
        cache[key] = torch.empty(shape, dtype=dtype, device=device)
    return cache[key]


def band_product(spectrum: torch.Tensor, kernels: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (N, O, m, m) = the central m x m band of spectrum (N, n, n) (``_Scale.band``: rows/columns
    0..ceil(m/2)-1 and n-floor(m/2)..n-1) times kernels (O, m, m): four products of quadrants, the same
    numbers as cropping first and one product, without writing the crop (measured 0.7x its time)."""
    n, m = spectrum.shape[-1], kernels.shape[-1]
    low, high = (m + 1) // 2, m // 2
    parts = ((slice(0, low), slice(0, low)), (slice(n - high, n), slice(low, m)))
    source = spectrum.unsqueeze(1)
    for rows_in, rows_out in parts:
        for cols_in, cols_out in parts:
            torch.mul(source[..., rows_in, cols_in], kernels[..., rows_out, cols_out],
                      out=out[..., rows_out, cols_out])
    return out


class FilterBank(nn.Module):
    """images -> list of per-layer responses, each float32 (N, D_l, H_l, W_l).

    ``blocks`` yields the same responses in pieces, (layer, filter ids, values), without assembling them, so
    the histogram step can consume each piece while it is still in cache: ``values`` has the images on dim 0
    and ``filter ids`` (int64, broadcastable to ``values``) names each element's filter within its layer.
    """

    layer_sizes: list[int]

    zero_below: float = 0.0  # responses with |v| <= this count as exactly 0

    def blocks(self, images: np.ndarray | torch.Tensor, sampled: bool = False):  # pragma: no cover - abstract
        """``sampled``: the values the histograms use (GaborBank: decimated grids, before the zero_below
        shrink), else every response (what ``forward`` returns)."""
        raise NotImplementedError

    def forward(self, images: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        outs: list[list[torch.Tensor]] = [[] for _ in self.layer_sizes]
        for layer, _, values in self.blocks(images):
            outs[layer].append(self.filters_first(values))
        return [torch.cat(parts, dim=1) for parts in outs]

    @staticmethod
    def grouped(values: torch.Tensor) -> torch.Tensor:
        """Block values -> a view (N, G, K, H, W) whose filters (G * K of them) are in filter-id order; the
        K filters of a group share memory (Gabor: the real and imaginary part of one complex response)."""
        return values.unsqueeze(2)

    @classmethod
    def filters_first(cls, values: torch.Tensor) -> torch.Tensor:
        """Block values -> (N, d, H, W) in filter-id order (a copy when the block is interleaved)."""
        view = cls.grouped(values)
        return view.reshape(view.shape[0], -1, *view.shape[-2:])


def compiled_luminance_fits(pixels: torch.Tensor, device: torch.device, size: int) -> bool:
    """Whether the compiled luminance + padding applies: CPU, uint8 NHWC batches of the bank's size."""
    return (
        LUMINANCE_COMPILED
        and device.type == "cpu"
        and pixels.device.type == "cpu"
        and pixels.dtype == torch.uint8
        and pixels.ndim == 4
        and tuple(pixels.shape[1:]) == (size, size, 3)
    )


class _Scale(NamedTuple):
    """One scale's share of a forward FFT: its spectrum, and where its samples lie."""

    index: int
    spectrum: torch.Tensor  # (O, m, m) complex64: kernels x phase shift (and / d^2 when cropped)
    band: torch.Tensor | None  # (m,) int64 rows/cols of the n x n spectrum kept when decimated, else None
    samples: int  # h = ceil(S / d): the first h x h outputs of the m x m inverse FFT are the samples


class _Group(NamedTuple):
    """Scales sharing one mirror-padded forward FFT of size n x n."""

    n: int
    before: int  # mirror padding before the image (rows and columns)
    mirror: torch.Tensor  # (n,) int64 padded -> image index, for images smaller than the padding
    scales: list[_Scale]


class GaborBank(FilterBank):
    """FFT convolution of the luminance with the complex Gabor kernels (real + i imag): one forward FFT per
    group of scales that share an FFT size, and one complex inverse FFT per orientation, whose real and
    imaginary parts are the two filters' responses.

    Scales with ``decimation`` d > 1 (``GaborParams``) crop the product spectrum to its central m x m band
    (m = n / d) before the inverse FFT: by the sampling theorem that yields the full-resolution response
    at every d-th pixel (up to the kernel's < 3e-4 spectral tail beyond Nyquist), d^2 times cheaper. The
    kernel spectra carry a phase ramp so that output (0, 0) of every inverse FFT is the first sample pixel:
    no crop offset, and each scale only pads for its own kernel.
    """

    def __init__(self, params: GaborParams, size: int):
        super().__init__()
        self.size = size
        self.layer_sizes = [params.n_filters]
        self.register_buffer("luma", torch.tensor(params.luma, dtype=torch.float32))
        self.kernels = gabor_kernels(params)  # float64 (2O, K_s, K_s) per scale, CPU
        self.decimation = list(params.decimation)
        self.n_orient = params.orientations
        # Filter id of each element of a (N, O, h, h, 2) block of scale s: (s * O + o) * 2 + part.
        ids = torch.arange(2 * self.n_orient).view(1, self.n_orient, 1, 1, 2)
        self.register_buffer("block_ids", ids, persistent=False)
        self.per_scale = 2 * self.n_orient
        self.zero_below = params.zero_below
        self._plans: dict[tuple[str, bool], list[_Group]] = {}

    def plan(self, sampled: bool) -> list[_Group]:
        """FFT groups for the histogram sample grids (``sampled``) or for every pixel; built on first use on
        the bank's device (kernel spectra in float64, stored as complex64)."""
        device = self.luma.device
        key = (str(device), sampled)
        if key not in self._plans:
            factors = self.decimation if sampled else [1] * len(self.kernels)
            self._plans[key] = self._build_plan(factors, device)
        return self._plans[key]

    def _build_plan(self, factors: list[int], device: torch.device) -> list[_Group]:
        size = self.size
        pads = [k.shape[-1] // 2 for k in self.kernels]
        # n: a multiple of d whose quotient m is a fast FFT length, covering the image and the kernel's reach.
        sizes = [d * fft_size(-(-(size + 2 * pad) // d)) for pad, d in zip(pads, factors, strict=True)]
        groups = []
        for n in sorted(set(sizes)):
            members = [s for s, m in enumerate(sizes) if m == n]
            before = max(pads[s] for s in members)  # n >= size + 2 * pad for every member (n was sized so)
            scales = []
            for s in members:
                d, kernel = factors[s], self.kernels[s]
                samples = -(-size // d)
                offset = (size - 1 - d * (samples - 1)) // 2  # centres the d-px grid in the image
                grid = torch.zeros(self.n_orient, n, n, dtype=torch.complex128)
                grid[:, : kernel.shape[-2], : kernel.shape[-1]] = torch.complex(kernel[0::2], kernel[1::2])
                # Kernel centre to (-c, -c) with c = before + offset: output j is the response at padded
                # position j + c, i.e. at image pixel j + offset (the circular convolution equals the linear
                # one there because the mirror padding covers the kernel's reach).
                shift = pads[s] + before + offset
                spectrum = torch.fft.fft2(torch.roll(grid, shifts=(-shift, -shift), dims=(-2, -1)))
                band = None
                if d > 1:
                    m = n // d
                    band = torch.cat([torch.arange(0, (m + 1) // 2), torch.arange(n - m // 2, n)])
                    spectrum = spectrum[:, band][:, :, band] / d**2  # ifft over m^2 instead of n^2 points
                    band = band.to(device)
                scales.append(_Scale(s, spectrum.to(device, torch.complex64), band, samples))
            groups.append(_Group(n, before, mirror_indices(size, before, n).to(device), scales))
        return groups

    def luminance(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim == 4 and x.shape[-1] == 3:  # NHWC: one matmul over the channel axis, no permute copy
            scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
            lum = x.to(self.luma.device, torch.float32) @ (self.luma * scale)
        else:
            lum = torch.einsum("nchw,c->nhw", as_nchw_float(x, self.luma.device), self.luma)
        if lum.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected {self.size} x {self.size} images, got {tuple(lum.shape[-2:])}")
        return lum  # (N, S, S)

    def blocks(self, images: np.ndarray | torch.Tensor, sampled: bool = False):
        """Per scale (0, filter ids, values (N, O, h, h, 2)): h = S, or ceil(S / d) when ``sampled``; a
        strided view into the inverse FFT's output. Unless ``sampled``, |v| <= zero_below is set to 0
        (``sampled`` leaves that to the caller: ``DescriptorExtractor`` folds it into its thresholds)."""
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch cannot share a read-only buffer (it would warn): the rare case
        pixels = torch.as_tensor(images)
        compiled = compiled_luminance_fits(pixels, self.luma.device, self.size)
        if compiled:  # services/luminance.py: fewer passes over memory than the matmul + F.pad below
            planes = compiled_luminance(pixels.numpy(), (self.luma * (1.0 / 255.0)).numpy())
        else:
            lum = self.luminance(pixels)
        size = self.size
        for group in self.plan(sampled):
            n, before = group.n, group.before
            if compiled:
                padded = torch.from_numpy(mirror_pad(planes, group.mirror.numpy()))
            elif n - size - before < size:  # torch's reflect = scipy's mirror; one fused op
                padded = F.pad(
                    lum[:, None], (before, n - size - before, before, n - size - before), mode="reflect"
                )
                padded = padded[:, 0]
            else:  # tiny images: mirror repeatedly (reflect padding is limited to less than the size)
                padded = lum[:, group.mirror][:, :, group.mirror]  # (N, n, n)
            spectrum = torch.fft.fft2(padded)  # (N, n, n) complex64
            for scale in group.scales:
                shape = (spectrum.shape[0], *scale.spectrum.shape)
                freq = scratch("freq", shape, spectrum.dtype, spectrum.device)
                if scale.band is None:
                    torch.mul(spectrum.unsqueeze(1), scale.spectrum, out=freq)
                else:  # the central m x m band, multiplied quadrant by quadrant (no cropped copy first)
                    band_product(spectrum, scale.spectrum, freq)
                resp = torch.fft.ifft2(freq)  # (N, O, m, m); a fresh output measured faster than in place
                h = scale.samples
                values = torch.view_as_real(resp)[:, :, :h, :h]  # (N, O, h, h, 2)
                if not sampled and self.zero_below > 0:
                    # float32 round-off in flat regions -> exactly 0 (see GaborParams); contiguous result
                    values = F.hardshrink(values, self.zero_below)
                yield 0, self.block_ids + scale.index * self.per_scale, values

    @staticmethod
    def grouped(values: torch.Tensor) -> torch.Tensor:
        """(N, O, h, w, 2) -> view (N, O, 2, h, w): per orientation, (real, imag)."""
        return values.permute(0, 1, 4, 2, 3)


# What may sit between conv1 and conv2 for the stem to be run module by module exactly as the network does
# (timm's BatchNormAct2d is a BatchNorm2d that applies its activation itself).
_BETWEEN_TYPES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Identity, nn.MaxPool2d, nn.LocalResponseNorm,
    nn.Dropout,
)


class ConvBank(FilterBank):
    """Conv1 (and conv2, after the network's own BN/ReLU/pool in between) of a CNN; pre-activation
    responses."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        between: nn.Sequential | None,
        conv2: nn.Conv2d | None,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ):
        super().__init__()
        self.conv1, self.between, self.conv2 = conv1, between, conv2
        self.layer_sizes = [conv1.out_channels] + ([conv2.out_channels] if conv2 is not None else [])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def blocks(self, images: np.ndarray | torch.Tensor, sampled: bool = False):
        x = (as_nchw_float(images, self.mean.device) - self.mean) / self.std
        first = self.conv1(x)  # (N, D_1, H_1, W_1), before the ReLU
        yield 0, torch.arange(first.shape[1], device=first.device).view(1, -1, 1, 1), first
        if self.conv2 is not None:
            second = self.conv2(self.between(first))  # (N, D_2, H_2, W_2)
            yield 1, torch.arange(second.shape[1], device=second.device).view(1, -1, 1, 1), second


def stem_units(model: nn.Module) -> list[nn.Module]:
    """The model's modules in registration order, leaves only, except that a BatchNorm2d counts as one unit
    with whatever it holds (timm's BatchNormAct2d runs its own activation)."""
    units: list[nn.Module] = []
    inside: str | None = None
    for name, m in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(m, nn.BatchNorm2d):
            units.append(m)
            inside = f"{name}."
        elif not list(m.children()):
            units.append(m)
    return units


def conv_stem(arch: str, layers: int, state_dict: dict[str, Any]) -> ConvBank:
    """The first ``layers`` conv layers of ``arch`` (a torchvision or timm name, ``services.backbones``) with
    the weights of ``state_dict`` (the whole network's, loaded strictly).

    With a BatchNorm network, layer 1 is conv1's output before its BN: the per-filter quantile bin edges make
    the histograms the same as after the BN's per-channel affine map, so ``conv_stem + bn1`` costs nothing
    more. Layer 2 runs conv2 on what the network feeds it (BN, activation, pooling)."""
    from services.backbones import create_model

    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = create_model(arch)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights file does not match {arch}: {str(exc)[:500]}") from exc
    units = stem_units(model)
    convs = [i for i, m in enumerate(units) if isinstance(m, nn.Conv2d)]
    conv1 = units[convs[0]]
    if layers == 1:
        return ConvBank(conv1, None, None, IMAGENET_MEAN, IMAGENET_STD)
    between = units[convs[0] + 1 : convs[1]]
    if not all(isinstance(m, _BETWEEN_TYPES) for m in between):
        raise WeightsError(f"{arch}: unexpected modules between conv1 and conv2: {between}")
    for m in between:
        if hasattr(m, "inplace"):
            m.inplace = False  # conv1's pre-activation output is returned too: never overwrite it
    return ConvBank(conv1, nn.Sequential(*between), units[convs[1]], IMAGENET_MEAN, IMAGENET_STD)


def build_bank(
    spec: DescriptorSpec, conv_weights: str | Path | None = None, device: torch.device | str | None = None
) -> FilterBank:
    """The spec's filter bank on ``device`` (default CPU); conv banks verify the weights file's sha256."""
    device = torch.device(device or "cpu")
    if spec.bank == "gabor":
        return GaborBank(spec.gabor, spec.size).to(device)
    params = spec.conv
    if conv_weights is None:
        raise WeightsError("the conv bank needs a local weights file (conv_weights); none was given")
    if not Path(conv_weights).is_file():
        raise WeightsError(f"conv weights file not found: {conv_weights}")
    digest = file_sha256(conv_weights)
    if digest != params.weights_sha256:
        raise WeightsError(
            f"conv weights file {conv_weights} has sha256 {digest[:12]}..., the spec expects "
            f"{params.weights_sha256[:12]}...: not the weights this index was built with"
        )
    bank = conv_stem(params.arch, params.layers, load_state_dict(conv_weights))
    if bank.layer_sizes != spec.layer_sizes:
        raise WeightsError(f"weights give layer sizes {bank.layer_sizes}, the spec says {spec.layer_sizes}")
    bank.mean.copy_(torch.tensor(params.mean).view(1, 3, 1, 1))
    bank.std.copy_(torch.tensor(params.std).view(1, 3, 1, 1))
    return bank.to(device)


def conv_spec(
    weights_path: str | Path, arch: str = "alexnet", layers: int = 1, size: int = 224, bins: int = 16
) -> DescriptorSpec:
    """A conv spec from a local weights file: records its sha256, the filter counts of the used layers and the
    input normalisation (the file's record, else the architecture's: ``services.backbones.normalization``)."""
    from services.backbones import normalization

    if not Path(weights_path).is_file():
        raise WeightsError(
            f"conv weights file not found: {weights_path} (the conv bank never uses random filters)"
        )
    state, recorded = load_weights(weights_path)
    stem = conv_stem(arch, layers, state)
    norm = normalization(arch, recorded)
    params = ConvParams(arch=arch, layers=layers, weights_sha256=file_sha256(weights_path), mean=norm.mean,
                        std=norm.std)
    sizes = stem.layer_sizes
    return DescriptorSpec(
        bank="conv", size=size, bins=bins, conv=params, layer_sizes=sizes, weights=layer_weights(sizes)
    )
