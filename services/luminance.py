"""The Gabor bank's first pass on CPU: uint8 RGB images -> mirror-padded float32 luminance, compiled.

torch's path (uint8 -> float32 copy, a matmul over the channel axis, then ``F.pad(mode="reflect")`` per FFT
group) makes several passes over memory; here the luminance is one vectorised loop over the pixels and each
padded plane one pass of row copies. The arithmetic is fixed: ``(r * w0 + g * w1) + b * w2`` in float32
without fused multiply-adds (numba leaves ``contract`` off), so every runner computes the same bits (they
differ from torch's matmul by at most 1 ulp). Without numba the bank keeps torch's path.
"""

from __future__ import annotations

import numpy as np

try:  # optional, as in services/binning.py
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the core extra
    njit = None


def _luminance(images, weights, out):
    """out (N, S, S) float32 = luminance of images uint8 (N, S, S, 3), weights float32 (3,) already / 255."""
    w0, w1, w2 = weights[0], weights[1], weights[2]
    pixels = out.shape[1] * out.shape[2]
    for i in range(images.shape[0]):
        flat = images[i].reshape(pixels * 3)
        lum = out[i].reshape(pixels)
        for p in range(pixels):
            r, g, b = np.float32(flat[3 * p]), np.float32(flat[3 * p + 1]), np.float32(flat[3 * p + 2])
            lum[p] = (r * w0 + g * w1) + b * w2
    return out


def _mirror_pad(planes, index, lo, out):
    """out[i, y, x] = planes[i, index[y], index[x]]; padded columns lo..lo+S-1 are image columns 0..S-1
    (one contiguous copy per row), the others are gathered."""
    width = planes.shape[2]
    hi = lo + width
    for i in range(planes.shape[0]):
        for y in range(out.shape[1]):
            src = planes[i, index[y]]
            dst = out[i, y]
            for x in range(lo):
                dst[x] = src[index[x]]
            dst[lo:hi] = src
            for x in range(hi, out.shape[2]):
                dst[x] = src[index[x]]
    return out


if njit is not None:
    _luminance = njit(nogil=True, cache=True, boundscheck=False)(_luminance)
    _mirror_pad = njit(nogil=True, cache=True, boundscheck=False)(_mirror_pad)

COMPILED = njit is not None


def luminance(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, S, S), each value computed as the module docstring says."""
    out = np.empty(images.shape[:3], np.float32)
    return _luminance(np.ascontiguousarray(images), np.asarray(weights, np.float32), out)


def mirror_pad(planes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """float32 (N, S, S) -> (N, n, n) on the padded grid ``index`` (n,) (padded -> image index, rows and
    columns alike: ``filters.mirror_indices``), which must run 0..S-1 straight somewhere."""
    width = planes.shape[2]
    starts = np.flatnonzero(index == 0)
    lo = next(int(s) for s in starts if np.array_equal(index[s : s + width], np.arange(width)))
    out = np.empty((planes.shape[0], len(index), len(index)), np.float32)
    return _mirror_pad(planes, index, lo, out)
