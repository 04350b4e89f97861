"""The compiled luminance + mirror padding (services/luminance.py) against the bank's torch path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services import luminance
from services.filters import GaborBank, mirror_indices
from services.spec import GaborParams


@pytest.mark.parametrize("size", [1, 5, 32])
def test_planes_match_torch_within_an_ulp_and_padding_is_exact(size):
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    bank = GaborBank(GaborParams(), size)
    weights = (bank.luma * (1.0 / 255.0)).numpy()
    planes = luminance.luminance(images, weights)
    reference = bank.luminance(torch.from_numpy(images)).numpy()
    assert np.abs(planes - reference).max() <= 2.5e-7  # one or two float32 ulps of values <= 1
    for before, total in [(0, size), (2, size + 4), (9, size + 40)]:
        index = mirror_indices(size, before, total)
        padded = luminance.mirror_pad(planes, index.numpy())
        expected = torch.from_numpy(planes)[:, index][:, :, index].numpy()
        assert np.array_equal(padded, expected)
        if 0 < before < size and total - size - before < size:
            pads = (before, total - size - before) * 2
            reflect = F.pad(torch.from_numpy(planes)[:, None], pads, mode="reflect")
            assert np.array_equal(padded, reflect[:, 0].numpy())


def test_bank_uses_the_compiled_path_and_stays_close_to_torch(monkeypatch):
    import services.filters as filters

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    bank = GaborBank(GaborParams(), 48)
    fits = filters.compiled_luminance_fits(torch.from_numpy(images), bank.luma.device, 48)
    assert fits == luminance.COMPILED
    compiled = [v.clone() for _, _, v in bank.blocks(images, sampled=True)]
    monkeypatch.setattr(filters, "LUMINANCE_COMPILED", False)
    plain = [v.clone() for _, _, v in bank.blocks(images, sampled=True)]
    for a, b in zip(compiled, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
