"""Descriptor extraction throughput (decode + Gabor bank + histograms) against a straightforward reference.

Reference: per image and per filter, ``scipy.ndimage.convolve`` (mode="mirror", the same maths) +
``numpy.histogram`` with the same edges (every pixel, i.e. ``decimation=[1, 1, 1, 1]``). Reports wall img/s
and process CPU-ms per image (comparable when the machine is shared), a per-stage profile of one
``histograms`` call, and the Jensen-Shannon divergence between the default (decimated) histograms and the
per-pixel ones on the same images and edges.

    .venv/bin/python bench/extract.py --workers 2 --torch-threads 1 --processes 2 --images 64
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from services.extract import DescriptorExtractor, count_at_least, fit_edges
from services.filters import band_product, gabor_kernels
from services.images import load_image
from services.spec import DescriptorSpec, GaborParams, gabor_spec

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"  # ../shared/data; --data overrides
REFERENCE = Path(__file__).resolve().parent / "results" / "extract_reference.npz"


def timed(fn):
    """(result, wall seconds, process CPU seconds): CPU time shows the cost when the machine is shared."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


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


_WORKER: DescriptorExtractor | None = None


def _init_worker(spec_json: str, chunk_size: int) -> None:
    global _WORKER
    torch.set_num_threads(1)
    spec = DescriptorSpec.model_validate_json(spec_json)
    _WORKER = DescriptorExtractor(spec, device="cpu", chunk_size=chunk_size)


def _worker_histograms(files: list[Path]) -> tuple[np.ndarray, float]:
    cpu = time.process_time()
    out = _WORKER.histograms_from_files(files, workers=1)
    return out, time.process_time() - cpu


def in_processes(extractor: DescriptorExtractor, files: list[Path], processes: int):
    """(histograms, wall s, CPU s summed over the tasks): one single-threaded extractor per process, fed
    chunks of 8 files. numpy's binning holds the GIL, so threads cannot scale it; processes do."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes, _init_worker, (extractor.spec.canonical_json(), extractor.chunk_size)) as pool:
        pool.map(_worker_histograms, [files[:2]] * processes, chunksize=1)  # start-up and warm-up, not timed
        wall = time.perf_counter()
        parts = pool.map(_worker_histograms, [files[i : i + 8] for i in range(0, len(files), 8)], chunksize=1)
        wall = time.perf_counter() - wall
    return np.concatenate([p[0] for p in parts]), wall, sum(p[1] for p in parts)


def stage_profile(extractor: DescriptorExtractor, images: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """CPU-ms per image of each stage of ``histograms`` (the same calls, timed one by one)."""
    bank, size, totals = extractor.bank, extractor.spec.size, defaultdict(float)
    n = images.shape[0]

    def tick(name: str, start: float) -> float:
        now = time.process_time()
        totals[name] += (now - start) * 1e3 / (n * repeats)
        return now

    with torch.inference_mode():
        for _ in range(repeats):
            t = time.process_time()
            lum = bank.luminance(images)
            t = tick("luminance", t)
            for group in bank.plan(sampled=True):
                after = group.n - size - group.before
                padded = F.pad(lum[:, None], (group.before, after, group.before, after), mode="reflect")[:, 0]
                t = tick("mirror pad", t)
                spectrum = torch.fft.fft2(padded)
                t = tick(f"forward fft2 {group.n}^2", t)
                for sc in group.scales:
                    if sc.band is None:
                        freq = spectrum.unsqueeze(1) * sc.spectrum
                    else:
                        freq = band_product(spectrum, sc.spectrum, torch.empty(
                            (n, *sc.spectrum.shape), dtype=spectrum.dtype))
                    m = freq.shape[-1]
                    t = tick(f"scale {sc.index}: band crop + spectrum product", t)
                    resp = torch.fft.ifft2(freq)
                    t = tick(f"scale {sc.index}: 6 inverse fft2 {m}^2", t)
                    values = torch.view_as_real(resp)[:, :, : sc.samples, : sc.samples]
                    rows = slice(sc.index * bank.per_scale, (sc.index + 1) * bank.per_scale)
                    count_at_least(bank.grouped(values).numpy(), extractor._thresholds[rows])
                    t = tick(f"scale {sc.index}: re/im split + binning ({sc.samples}^2 values x 12)", t)
    return dict(totals)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = p.astype(np.float64), q.astype(np.float64)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / m), 0) + np.where(q > 0, q * np.log(q / m), 0)
    return kl.sum(-1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="decode + extract threads")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=64, help="images per dataset for our implementation")
    parser.add_argument("--reference-images", type=int, default=1, help="images for the slow reference")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="also run with this many processes (0: off)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    parser.add_argument("--build-images", type=int, default=256, help="images for the build-path comparison")
    parser.add_argument("--only-build-paths", action="store_true", help="skip everything else")
    parser.add_argument(
        "--save-reference",
        action="store_true",
        help=f"store the histograms to compare with in {REFERENCE.name} (once, before changing extraction)",
    )
    args = parser.parse_args()
    from extract_paths import compare_build_paths, physical_bound

    if args.only_build_paths or args.save_reference:
        torch.set_num_threads(args.torch_threads)
        compare_build_paths(args.data, REFERENCE, args.build_images, args.processes, args.save_reference)
        physical_bound(gabor_spec(size=args.size))
        return
    torch.set_num_threads(args.torch_threads)
    print(
        f"workers={args.workers} torch_threads={args.torch_threads} size={args.size} cpus={os.cpu_count()} "
        f"load={os.getloadavg()[0]:.1f}"
    )

    datasets = {
        "imagewoof-jpeg": sorted(args.data.glob("imagewoof/val/*/*.JPEG"))[::5][: args.images],
        "cifar100-png": sorted(args.data.glob("cifar100/train/*/*.png"))[::97][: args.images],
    }
    fit_files = sorted(args.data.glob("imagewoof/train/*/*.JPEG"))[::10][:16]
    fit_images = np.stack([load_image(f, args.size) for f in fit_files])
    specs = {
        "default (decimation [1, 1, 2, 4])": gabor_spec(size=args.size),
        "per pixel (decimation [1, 1, 1, 1])": gabor_spec(
            size=args.size, params=GaborParams(decimation=[1] * 4)
        ),
    }
    extractors = {}
    for name, spec in specs.items():
        plain = DescriptorExtractor(spec, device="cpu", chunk_size=args.chunk_size)
        spec = spec.with_edges(fit_edges(plain, [fit_images], spec.bins, 100_000))
        extractors[name] = DescriptorExtractor(
            spec, device="cpu", chunk_size=args.chunk_size, workers=args.workers
        )
        extractors[name].histograms(fit_images[:4])  # warm-up: FFT plans, kernel spectra, buffers

    exact = extractors["per pixel (decimation [1, 1, 1, 1])"]
    for data, files in datasets.items():
        n_ref = min(args.reference_images, len(files))
        ref, ref_wall, ref_cpu = timed(lambda files=files, n_ref=n_ref: reference(exact.spec, files[:n_ref]))
        print(f"{data}: reference {n_ref / ref_wall:.3f} img/s ({ref_cpu / n_ref * 1e3:.0f} CPU-ms/img)")
        for name, extractor in extractors.items():
            hist, wall, cpu = timed(lambda files=files, ex=extractor: ex.histograms_from_files(files))
            line = (
                f"  {name}: {len(files) / wall:.1f} img/s ({cpu / len(files) * 1e3:.1f} CPU-ms/img), "
                f"x{(len(files) / wall) / (n_ref / ref_wall):.0f} the reference"
            )
            if extractor is exact:
                line += f", max |hist diff| vs reference {np.abs(hist[:n_ref] - ref).max():.2e}"
            print(line)
            if args.processes > 0:
                par, wall, cpu = in_processes(extractor, files, args.processes)
                assert np.array_equal(par, hist), "processes must give the same histograms"
                print(
                    f"    {args.processes} processes x 1 thread: {len(files) / wall:.1f} img/s "
                    f"({cpu / len(files) * 1e3:.1f} CPU-ms/img), "
                    f"x{(len(files) / wall) / (n_ref / ref_wall):.0f}"
                )

    images = np.stack([load_image(f, args.size) for f in datasets["imagewoof-jpeg"][:24]])
    default = extractors["default (decimation [1, 1, 2, 4])"]
    same_edges = exact.spec.with_edges(exact.spec.edges_array())
    decimated = DescriptorExtractor(
        specs["default (decimation [1, 1, 2, 4])"].with_edges(same_edges.edges_array()), device="cpu"
    )
    js = js_divergence(decimated.histograms(images), exact.histograms(images))  # (N, D)
    per_scale = ", ".join(f"scale {s}: mean {js[:, 12 * s : 12 * s + 12].mean():.1e}" for s in range(4))
    print(f"JS(decimated || per pixel), 24 Imagewoof images, same edges: {per_scale}; max {js.max():.1e}")

    print("stage profile, histograms of 2 images, 1 thread (CPU-ms/img):")
    torch.set_num_threads(1)
    for name, ms in stage_profile(default, images[:2]).items():
        print(f"  {name}: {ms:.2f}")
    decode = timed(lambda: [load_image(f, args.size) for f in datasets["imagewoof-jpeg"][:16]])[2] / 16 * 1e3
    print(f"  (decode + resize, Imagewoof JPEG: {decode:.2f})")
    compare_build_paths(args.data, REFERENCE, args.build_images, args.processes, False)
    physical_bound(default.spec)


if __name__ == "__main__":
    main()
