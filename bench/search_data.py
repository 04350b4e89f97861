"""Data for bench/search.py: real gabor descriptors of CIFAR-100 images, and corpora replicated from them.

Descriptors use the default bank (48 gabor filters, 16 bins: D * B = 768, the default spec's dimension) at
``--size`` px (CIFAR images are 32 px; 64 keeps extraction of a few thousand images to minutes on 2 shared
cores; search cost depends only on D * B). They are cached under bench_out/ so reruns skip extraction.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# The shared data beside the project (../shared/data from the project root), never a machine path.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED_DATA / "cifar100" / "train"


def cifar_files(n: int) -> list[Path]:
    """n CIFAR-100 training files, spread evenly over the 100 classes, deterministic."""
    classes = sorted(p for p in CIFAR.iterdir() if p.is_dir())
    per_class = -(-n // len(classes))
    files = [f for c in classes for f in sorted(c.glob("*.png"))[:per_class]]
    return files[:n]


def real_descriptors(n: int, size: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 48, 16) float32 descriptors of real images and the weights (48,), cached in ``cache_dir``."""
    cache = cache_dir / f"search-cifar-gabor{size}-{n}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["histograms"], data["weights"]
    import torch

    from services.extract import DescriptorExtractor, fit_edges
    from services.spec import gabor_spec

    torch.set_num_threads(1)  # shared cores: one thread each ran ~10x faster than two under load
    started = time.perf_counter()
    extractor = DescriptorExtractor(gabor_spec(size=size, bins=16), device="cpu")
    files = cifar_files(n)
    edge_sample = extractor.load_batch(files[:: max(1, n // 500)])
    spec = extractor.spec.with_edges(fit_edges(extractor, [edge_sample], 16))
    extractor = DescriptorExtractor(spec, device="cpu")
    out = np.concatenate([extractor.histograms_from_files(files[i : i + 256]) for i in range(0, n, 256)])
    weights = spec.weights_array().astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, histograms=out, weights=weights)
    print(f"extracted {n} descriptors at {size} px in {time.perf_counter() - started:.0f} s -> {cache}")
    return out, weights


def replicate(base: np.ndarray, n: int, seed: int = 0, sigma: float = 0.2, chunk: int = 65536) -> np.ndarray:
    """n descriptors made from real ones: a random convex mix of two (weight of the first in [0.5, 1]) times
    log-normal multiplicative noise per bin, renormalised per filter. float32 (n, D, B)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, *base.shape[1:]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        a, b = base[rng.integers(0, len(base), m)], base[rng.integers(0, len(base), m)]
        alpha = rng.uniform(0.5, 1.0, (m, 1, 1)).astype(np.float32)
        h = (alpha * a + (1 - alpha) * b) * np.exp(sigma * rng.standard_normal(a.shape, dtype=np.float32))
        out[start : start + m] = h / h.sum(axis=2, keepdims=True)
    return out


class ReplicatedCorpus:
    """A lazy (n, D, B) corpus of real descriptors plus small noise, generated block by block on slicing, so a
    corpus of 10 M x 768 bins (30 GB as float32) streams straight into the engine's store on disk.

    Row i: real descriptor ``base[a_i]`` mixed with a second one (weight of the first in [0.5, 1]), times
    log-normal multiplicative noise exp(sigma * N(0, 1)) per bin, renormalised per filter: no two rows are
    duplicates, so recall is not made trivial by exact copies. The noise comes from a fixed pool of 2**24
    standard normals read at a random offset per row (a copy instead of 768 fresh normals and exps per row).
    Rows depend only on (seed, i // block), so a corpus of N rows is the first N
    rows of any larger one with the same seed: every N of the scale curve shares its data.
    """

    ndim = 3

    def __init__(self, base: np.ndarray, n: int, seed: int = 0, sigma: float = 0.2, block: int = 65536):
        self.base = np.asarray(base, dtype=np.float32)
        self.shape = (n, *self.base.shape[1:])
        self.seed, self.block = seed, block
        width = int(np.prod(self.base.shape[1:]))
        pool = np.random.default_rng([seed, 2**31]).standard_normal(2**24, dtype=np.float32)
        self._noise = np.lib.stride_tricks.sliding_window_view(np.exp(sigma * pool), width)

    def __len__(self) -> int:
        return self.shape[0]

    def _block(self, j: int) -> np.ndarray:
        start = j * self.block
        m = min(self.block, self.shape[0] - start)
        rng = np.random.default_rng([self.seed, j])
        a, b = self.base[rng.integers(0, len(self.base), m)], self.base[rng.integers(0, len(self.base), m)]
        alpha = rng.uniform(0.5, 1.0, (m, 1, 1)).astype(np.float32)
        noise = self._noise[rng.integers(0, len(self._noise), m)].reshape(a.shape)
        h = (alpha * a + (1 - alpha) * b) * noise
        return h / h.sum(axis=2, keepdims=True)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("ReplicatedCorpus supports contiguous slices only")
            blocks = range(start // self.block, -(-stop // self.block)) if stop > start else range(0)
            out = np.concatenate([self._block(j) for j in blocks]) if len(blocks) else \
                np.empty((0, *self.shape[1:]), np.float32)
            offset = start - (blocks.start * self.block if len(blocks) else start)
            return out[offset : offset + stop - start]
        ids = np.asarray(key, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), *self.shape[1:]), np.float32)
        for j in np.unique(ids // self.block):
            sel = ids // self.block == j
            out[sel] = self._block(int(j))[ids[sel] - j * self.block]
        return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cache-dir", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    h, _ = real_descriptors(args.real, args.size, args.cache_dir)
    print(h.shape, "zero bins:", float((h == 0).mean()))
