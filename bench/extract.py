"""Descriptor extraction throughput (decode + Gabor bank + histograms) against a straightforward reference.

Reference: per image and per filter, ``scipy.ndimage.convolve`` (mode="mirror", the same maths) +
``numpy.histogram`` with the same edges. Also times the Gabor bank as FFT vs direct
``conv2d``.

    .venv/bin/python bench/extract.py --threads 2 --images 64 --reference-images 2
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from services.extract import DescriptorExtractor, fit_edges
from services.filters import gabor_kernels
from services.images import load_image
from services.spec import gabor_spec

DATA = Path("/work/shared/data")


def timed(fn):
    """(result, wall seconds, process CPU seconds): CPU time shows the cost when the machine is shared."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ours(extractor: DescriptorExtractor, files: list[Path], threads: int) -> np.ndarray:
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        chunks = []
        step = 32
        for start in range(0, len(files), step):
            images = np.stack(
                list(pool.map(lambda f: load_image(f, extractor.spec.size), files[start : start + step]))
            )
            chunks.append(extractor.histograms(images))
    return np.concatenate(chunks)


def reference(spec, files: list[Path]) -> np.ndarray:
    kernels = [k.numpy() for k in gabor_kernels(spec.gabor)]
    edges = spec.edges_array()
    luma = np.asarray(spec.gabor.luma)
    out = np.empty((len(files), spec.dim, spec.bins), dtype=np.float32)
    for i, path in enumerate(files):
        lum = load_image(path, spec.size).astype(np.float64) @ luma / 255.0
        f = 0
        for per_scale in kernels:
            for kernel in per_scale:
                resp = ndimage.convolve(lum, kernel, mode="mirror").astype(np.float32)
                resp[np.abs(resp) <= spec.gabor.zero_below] = 0.0
                counts, _ = np.histogram(resp, bins=np.concatenate([[-np.inf], edges[f], [np.inf]]))
                out[i, f] = counts / resp.size
                f += 1
    return out


def grouped_conv_responses(spec, images: np.ndarray) -> torch.Tensor:
    """The same responses by direct conv2d per scale (reflect padding), for the FFT-vs-conv comparison."""
    lum = torch.from_numpy(images).float() @ torch.tensor(spec.gabor.luma) / 255.0  # (N, S, S)
    outs = []
    for per_scale in gabor_kernels(spec.gabor):
        pad = per_scale.shape[-1] // 2
        x = F.pad(lum[:, None], (pad, pad, pad, pad), mode="reflect")
        outs.append(F.conv2d(x, per_scale.flip(-1, -2)[:, None].float()))  # flip: true convolution
    return torch.cat(outs, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="images per dataset for our implementation")
    parser.add_argument("--reference-images", type=int, default=2, help="images for the slow reference")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} size={args.size} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")

    datasets = {
        "imagewoof-jpeg": sorted(DATA.glob("imagewoof/val/*/*.JPEG"))[::5][: args.images],
        "cifar100-png": sorted(DATA.glob("cifar100/train/*/*.png"))[::97][: args.images],
    }
    spec = gabor_spec(size=args.size)
    plain = DescriptorExtractor(spec, device="cpu", chunk_size=args.chunk_size)
    fit_files = sorted(DATA.glob("imagewoof/train/*/*.JPEG"))[::10][:16]
    edges = fit_edges(plain, [np.stack([load_image(f, args.size) for f in fit_files])], spec.bins, 100_000)
    spec = spec.with_edges(edges)
    extractor = DescriptorExtractor(spec, device="cpu", chunk_size=args.chunk_size)
    extractor.histograms(np.zeros((args.chunk_size, args.size, args.size, 3), np.uint8))  # warm-up

    for name, files in datasets.items():
        hist, wall, cpu = timed(lambda files=files: ours(extractor, files, args.threads))
        n_ref = min(args.reference_images, len(files))
        ref, ref_wall, ref_cpu = timed(lambda files=files, n_ref=n_ref: reference(spec, files[:n_ref]))
        diff = np.abs(hist[:n_ref] - ref).max()
        print(
            f"{name}: ours {len(files) / wall:.1f} img/s ({cpu / len(files) * 1e3:.0f} CPU-ms/img), "
            f"reference {n_ref / ref_wall:.3f} img/s ({ref_cpu / n_ref * 1e3:.0f} CPU-ms/img), "
            f"speed-up x{(len(files) / wall) / (n_ref / ref_wall):.0f}, max |hist diff| {diff:.2e}"
        )

    images = np.stack([load_image(f, args.size) for f in datasets["imagewoof-jpeg"][:8]])
    _, fft_wall, _ = timed(lambda: [extractor.responses(images[i : i + 2]) for i in range(0, 8, 2)])
    conv, conv_wall, _ = timed(lambda: grouped_conv_responses(spec, images))
    diff = (extractor.responses(images)[0] - conv).abs().max().item()
    print(
        f"gabor bank, responses only: FFT {8 / fft_wall:.1f} img/s, direct conv2d {8 / conv_wall:.1f} img/s "
        f"(FFT x{conv_wall / fft_wall:.1f}; max |diff| {diff:.1e})"
    )


if __name__ == "__main__":
    main()
