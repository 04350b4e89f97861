"""The compiled threshold counter equals the numpy one exactly, on the layouts the banks hand over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services import binning
from services.extract import count_at_least, count_at_least_numpy


def test_numba_is_installed_so_the_build_gets_the_compiled_kernel():
    assert binning.COMPILED


@pytest.mark.parametrize("shape", [(2, 6, 40, 40), (1, 3, 17, 9)])
def test_interleaved_complex_responses_count_exactly(shape):
    rng = np.random.default_rng(1)
    n, orient, h, m = shape[0], shape[1], shape[2], shape[2] + 7
    resp = torch.randn(n, orient, m, m, dtype=torch.complex64)
    values = torch.view_as_real(resp)[:, :, :h, :h].permute(0, 1, 4, 2, 3).numpy()  # (n, O, 2, h, h) strided
    thresholds = np.sort(rng.standard_normal((2 * orient, 15)).astype(np.float32), axis=1)
    thresholds[0, 3] = values[0, 0, 0, 5, 5]  # a value exactly on a threshold counts as >=
    values[0, 1, 1, 2, 2] = np.nan  # never >= anything, in both paths
    expected = count_at_least_numpy(values, thresholds)
    assert np.array_equal(binning.count_at_least_compiled(values, thresholds), expected)
    assert np.array_equal(count_at_least(values, thresholds), expected)


def test_flat_responses_count_exactly():
    rng = np.random.default_rng(2)
    values = rng.standard_normal((3, 5, 333)).astype(np.float32)
    thresholds = np.sort(rng.standard_normal((5, 7)).astype(np.float32), axis=1)
    expected = count_at_least_numpy(values, thresholds)
    assert np.array_equal(binning.count_at_least_compiled(values, thresholds), expected)


@pytest.mark.parametrize("n_thresholds", [1, 2, 8])
def test_threshold_counts_not_a_multiple_of_three_count_exactly(n_thresholds):
    rng = np.random.default_rng(3)
    values = rng.standard_normal((2, 4, 500)).astype(np.float32)
    thresholds = np.sort(rng.standard_normal((4, n_thresholds)).astype(np.float32), axis=1)
    expected = count_at_least_numpy(values, thresholds)
    assert np.array_equal(binning.count_at_least_compiled(values, thresholds), expected)


def test_rows_longer_than_a_float32_pass_count_exactly(monkeypatch):
    """Counts are float32 within a pass of SEGMENT values; a longer plane is counted in several passes."""
    rng = np.random.default_rng(4)
    values = rng.standard_normal((1, 2, binning.SEGMENT + 12_345)).astype(np.float32)
    values[0, 0, :] = 1.0  # every value of filter 0 counts for the low thresholds: > one pass's worth
    thresholds = np.array([[-1.0, 0.5, 2.0], [-0.1, 0.0, 0.1]], dtype=np.float32)
    expected = count_at_least_numpy(values, thresholds)
    assert expected[0, 0, 0] == values.shape[-1]
    assert np.array_equal(binning.count_at_least_compiled(values, thresholds), expected)
