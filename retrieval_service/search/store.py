"""The histogram store: (N, D, B) histograms on disk as float16 or uint8, memory-mapped, decoded on read.

- float16 (``histograms.f16``): 11 significant bits per bin (relative error <= 4.9e-4), 2 bytes per bin.
- uint8 (``histograms.u8``): each filter's B bins as integer counts that sum to exactly 255 (largest-remainder
  rounding), decoded as count / 255: every decoded filter still sums to 1, with an absolute step of 1/255 per
  bin. One byte per bin: 10 M sources x 768 bins take 7.7 GB instead of 15.4 GB, so the store of a very large
  corpus still fits the page cache of one box (the re-rank reads random rows; a store that does not fit turns
  every query into disk seeks).

The engine computes every distance on the decoded stored values (both the two-stage and the exact path),
so results are reproducible from the file alone, whatever its dtype. Files are raw, without a header: the
shape and dtype live in ``engine.json``. A raw file maps straight into memory, so several service processes
share one copy in the page cache.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.errors import IndexIntegrityError
from services.fileio import atomic_writer

F16 = np.dtype("<f2")
U8 = np.dtype("|u1")
STORE_FILES = {F16.str: "histograms.f16", U8.str: "histograms.u8"}
F16_MAX_BYTES = 4 << 30  # larger float16 stores are written as uint8 (half the page cache)
_U8_SCALE = 255
CHUNK = 65536  # rows per write / decode block


def store_file(dtype) -> str:
    """File name of a store of ``dtype``; an unknown dtype raises ``ValueError``."""
    key = np.dtype(dtype).str
    if key not in STORE_FILES:
        raise ValueError(f"histogram dtype must be one of {sorted(STORE_FILES)}, got {key!r}")
    return STORE_FILES[key]


def choose_dtype(n: int, d: int, b: int) -> np.dtype:
    """float16 while the float16 store stays under ``F16_MAX_BYTES`` (4 GiB: 2.8 M sources at D*B = 768),
    uint8 beyond."""
    return F16 if n * d * b * F16.itemsize <= F16_MAX_BYTES else U8


def encode(block: np.ndarray, dtype) -> np.ndarray:
    """Validated float histograms (c, D, B) -> stored values of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == F16:
        return np.ascontiguousarray(block, dtype=F16)
    if dtype != U8:
        raise ValueError(f"cannot encode histograms as {dtype}")
    h = np.asarray(block, dtype=np.float32)
    sums = h.sum(axis=2, keepdims=True)
    scaled = h * (_U8_SCALE / np.where(sums > 0, sums, 1)).astype(np.float32)
    counts = np.rint(scaled)
    # Largest-remainder correction: rounding leaves each filter a few counts off 255; move one count at a time
    # where the rounding error is largest (at most B / 2 passes, each one argmax over the block).
    off = (counts.sum(axis=2) - _U8_SCALE).astype(np.int64)  # (c, D)
    rows, filters = np.nonzero(off)
    while len(rows):
        err = counts[rows, filters] - scaled[rows, filters]  # (m, B)
        up = off[rows, filters] < 0
        err = np.where(up[:, None], -err, np.where(counts[rows, filters] > 0, err, -np.inf))
        bins = np.argmax(err, axis=1)
        step = np.where(up, 1, -1)
        counts[rows, filters, bins] += step
        off[rows, filters] += step
        keep = off[rows, filters] != 0
        rows, filters = rows[keep], filters[keep]
    return counts.astype(U8)


def decode(raw: np.ndarray) -> np.ndarray:
    """Stored values -> float32 histograms."""
    if raw.dtype == U8:
        return raw.astype(np.float32) * np.float32(1.0 / _U8_SCALE)
    return raw.astype(np.float32)


class HistogramStore:
    """(N, D, B) stored histograms; indexing returns decoded float32 (``store[ids]``, ``store[a:b]``)."""

    def __init__(self, raw: np.ndarray, path: Path | None = None, sha256: str | None = None):
        if raw.dtype.str not in STORE_FILES:
            raise ValueError(f"histogram dtype must be one of {sorted(STORE_FILES)}, got {raw.dtype.str!r}")
        self.raw = raw  # an array, or a read-only memory map of ``path``
        self.path = path
        self.sha256 = sha256  # of ``path``, when this process wrote it

    shape = property(lambda self: self.raw.shape)
    ndim = property(lambda self: 3)
    dtype = property(lambda self: self.raw.dtype)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key) -> np.ndarray:
        return decode(np.asarray(self.raw[key]))

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Stored (undecoded) rows [start, stop): read from the file when memory-mapped, so a full scan
        leaves the pages in the page cache without mapping them into this process."""
        if not isinstance(self.raw, np.memmap) or self.path is None:
            return np.asarray(self.raw[start:stop])
        row = int(np.prod(self.raw.shape[1:])) * self.raw.dtype.itemsize
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), (stop - start) * row, start * row)
        if len(data) != (stop - start) * row:
            raise IndexIntegrityError(f"{self.path}: short read at rows {start}..{stop} (truncated?)")
        return np.frombuffer(data, dtype=self.raw.dtype).reshape(stop - start, *self.raw.shape[1:])

    def release(self) -> None:
        """Drop this process's mapping of pages it has read (a pass over the whole store): they stay in the
        page cache for other processes, but no longer count in this process's RSS."""
        base = getattr(self.raw, "_mmap", None)
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            base.madvise(mmap.MADV_DONTNEED)


def write_store(path: str | os.PathLike, histograms, dtype, prepare: Callable | None = None,
                chunk: int = CHUNK) -> str:
    """Stream (N, D, B) histograms (any sliceable array, memory map or lazy source) to a raw store of
    ``dtype``, block by block, never holding more than ``chunk`` rows; returns the file's SHA-256.

    ``prepare(block, start)`` validates each float block first (float32 (c, D, B) out). Written under a
    temporary name and renamed: a reader never sees a half-written store.
    """
    digest = hashlib.sha256()
    with atomic_writer(path) as fh:
        for start in range(0, len(histograms), chunk):
            block = histograms[start : start + chunk]
            if isinstance(block, np.ndarray) and block.dtype == np.dtype(dtype):
                data = np.ascontiguousarray(block).tobytes()  # already encoded (saving a store elsewhere)
            else:
                data = encode(prepare(block, start) if prepare else block, dtype).tobytes()
            digest.update(data)
            fh.write(data)
    return digest.hexdigest()


def open_store(path: str | os.PathLike, shape: tuple[int, int, int], dtype, mmap_file: bool = True
               ) -> HistogramStore:
    """The stored histograms, memory-mapped read-only (or read into RAM with ``mmap_file=False``).

    A missing file or one whose size does not match ``shape`` and ``dtype`` raises ``IndexIntegrityError``.
    """
    path, dtype = Path(path), np.dtype(dtype)
    expected = int(np.prod(shape)) * dtype.itemsize
    try:
        actual = path.stat().st_size
    except FileNotFoundError as exc:
        raise IndexIntegrityError(f"histogram store missing: {path}") from exc
    if actual != expected:
        raise IndexIntegrityError(
            f"histogram store {path} has {actual} bytes, expected {expected} for shape {shape} of {dtype} "
            "(truncated or from another index)"
        )
    if shape[0] == 0:
        raw = np.zeros(shape, dtype=dtype)
    elif mmap_file:
        raw = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    else:
        raw = np.fromfile(path, dtype=dtype).reshape(shape)
    return HistogramStore(raw, path)
