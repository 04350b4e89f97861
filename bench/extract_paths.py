"""The build's extraction paths on the same images, and where the physical bound lies (used by extract.py).

"before" is the build's CPU path up to commit 71ecaee, kept here as the reference: one DataLoader process
decodes, the main process runs one extractor with 2 threads (torch on 1 thread). "after" is the current
path: ``--workers`` processes that each decode and extract whole batches (``build/pool.py``).
Both must give identical histograms; both are compared with today's stored histograms
(``results/extract_reference.npz``, written by ``--save-reference`` before any change) by their max JS.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from retrieval_service.build.extraction import make_extractor
from retrieval_service.build.pool import describe_in_processes, worker_pool
from retrieval_service.build.shards import make_loader
from retrieval_service.build.workers import (
    ExtractionSetup,
    PositionedImages,
    batch_plan,
    describe_batch,
    histograms_of,
    worker_extractor,
)
from retrieval_service.index.corpus import SourceRecord
from services import binning
from services.extract import DescriptorExtractor, fit_edges
from services.images import load_image
from services.spec import DescriptorSpec, gabor_spec

BATCH = 16


def _records(root: Path, files: list[Path]) -> list[SourceRecord]:
    return [
        SourceRecord(i, f.relative_to(root).as_posix(), None, 0, "x", f.suffix[1:].lower(), f.stat().st_size)
        for i, f in enumerate(files)
    ]


def _fitted_spec(data: Path) -> DescriptorSpec:
    spec = gabor_spec(size=224)
    fit = np.stack([load_image(f, 224) for f in sorted(data.glob("imagewoof/train/*/*.JPEG"))[::10][:16]])
    return spec.with_edges(fit_edges(DescriptorExtractor(spec, device="cpu"), [fit], spec.bins, 100_000))


def _before(root, records, spec, batches):
    torch.set_num_threads(1)
    extractor = make_extractor(spec, torch.device("cpu"), None)  # os.cpu_count() threads
    for batch in make_loader(root, records, spec.size, batches, 1):
        yield histograms_of(extractor, batch)


def _after(root, records, spec, batches, processes, pool=None):
    setup = ExtractionSetup.of(spec, "cpu", None)
    for _, hists in describe_in_processes(setup, root, records, batches, processes, pool=pool):
        yield hists


def _timed(results) -> tuple[np.ndarray, float]:
    """(histograms, wall s from the call to the last batch)."""
    t0 = time.perf_counter()
    parts = list(results)
    return np.concatenate(parts), time.perf_counter() - t0


def warm_pool_wall(root: Path, records, spec: DescriptorSpec, batches, processes: int):
    """(histograms, wall s) of the process-per-core path on a pool started and warmed beforehand (each
    worker has run one batch: bank, FFT plans, buffers), i.e. the rate a long build extracts at.

    Why not "time after the first result": results come back in order, and while the first batch is being
    waited for the other workers have already finished later ones, so that clock misses work done
    before it started (it gave 800 img/s from workers that cost 12 CPU-ms/img each)."""
    setup = ExtractionSetup.of(spec, "cpu", None)
    with worker_pool(setup, root, processes) as pool:
        warm_up = [[0]] * (4 * processes)  # one image per task: every worker gets at least one
        list(describe_in_processes(setup, root, records, warm_up, processes, pool=pool))
        return _timed(_after(root, records, spec, batches, processes, pool=pool))


def per_core_cost(root: Path, records, spec: DescriptorSpec, batches, compiled: bool) -> float:
    """CPU-ms per image of one worker's unit of work (decode + extract, one thread) run in this process:
    children's CPU time is not reliably visible from here, and this is what each worker spends.
    ``compiled``: bin with the numba kernel (``services/binning.py``), else with the numpy path it replaced.
    """
    import services.extract

    services.extract.COMPILED = compiled and binning.COMPILED
    torch.set_num_threads(1)
    extractor = worker_extractor(ExtractionSetup.of(spec, "cpu", None))
    images = PositionedImages(root, records, spec.size, range(len(records)))
    describe_batch(extractor, images, batches[0][:2])  # FFT plans, buffers
    cpu = time.process_time()
    for positions in batches:
        describe_batch(extractor, images, positions)
    cost = (time.process_time() - cpu) / len(records) * 1e3
    services.extract.COMPILED = binning.COMPILED
    return cost


def js_max(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p.astype(np.float64), q.astype(np.float64)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * np.log(p / m), 0) + np.where(q > 0, q * np.log(q / m), 0)
    return float((kl.sum(-1) / 2).max())


def compare_build_paths(data: Path, reference: Path, n: int, processes: int, save: bool) -> None:
    root = data / "imagewoof" / "val"
    every = sorted(root.glob("*/*.JPEG"))
    files = every[:: max(1, len(every) // n)][:n]
    n = len(files)  # rates are per image actually processed (the folder may hold fewer than asked)
    records = _records(root, files)
    batches = batch_plan(0, len(records), BATCH)
    if save or not reference.is_file():
        spec = _fitted_spec(data)
    else:
        with np.load(reference) as stored:
            spec = DescriptorSpec.model_validate_json(str(stored["spec_json"]))
    before, wall = _timed(_before(root, records, spec, batches))
    rate_before = n / wall
    print(f"build path before (1 decoding process + 2 extractor threads): {rate_before:.1f} img/s end to end")
    if save:
        reference.parent.mkdir(parents=True, exist_ok=True)
        rel = np.array([f.relative_to(data).as_posix() for f in files])
        np.savez(reference, spec_json=spec.canonical_json(), files=rel, hists=before)
        print(f"stored today's histograms of {n} images in {reference}")
    after = before
    if processes > 0:
        after, wall = _timed(_after(root, records, spec, batches, processes))
        warm, warm_wall = warm_pool_wall(root, records, spec, batches, processes)
        print(
            f"build path after ({processes} processes, each decode + extract): {n / wall:.1f} img/s end to "
            f"end (spawn included) = x{n / wall / rate_before:.2f}; {n / warm_wall:.1f} img/s on a warm pool "
            f"(start-up excluded); identical to before: {np.array_equal(after, before)} and "
            f"{np.array_equal(warm, before)}"
        )
    cores = max(processes, 1)
    for compiled in (False, True):
        cost = per_core_cost(root, records, spec, batches, compiled)
        print(
            f"one worker's cost, {'compiled' if compiled else 'numpy'} binning: {cost:.2f} CPU-ms/img "
            f"(decode + extract, 1 thread): at most {1e3 / cost:.0f} img/s per idle core, "
            f"{cores * 1e3 / cost:.0f} img/s on {cores}"
        )
    source = data / "imagenet-source"  # the build benchmark's corpus: 160 px JPEGs, upsampled to 224
    if source.is_dir():
        files = sorted(source.glob("*/*"))[:: max(1, len(list(source.glob("*/*"))) // n)][:n]
        recs = _records(source, files)
        cost = per_core_cost(source, recs, spec, batch_plan(0, len(recs), BATCH), True)
        print(
            f"one worker's cost, {len(recs)} imagenet-source JPEGs, compiled: {cost:.2f} CPU-ms/img: "
            f"at most {cores * 1e3 / cost:.0f} img/s on {cores} idle cores"
        )
    with np.load(reference) as stored:  # the stored images, through one worker's unit of work
        ref_files = [data / f for f in stored["files"]]
        ref_records = _records(data, ref_files)
        extractor = worker_extractor(ExtractionSetup.of(spec, "cpu", None))
        images = PositionedImages(data, ref_records, spec.size, range(len(ref_records)))
        now = np.concatenate(
            [describe_batch(extractor, images, b)[1] for b in batch_plan(0, len(ref_records), BATCH)]
        )
        js = js_max(now, stored["hists"])
    print(f"max JS against today's stored histograms ({len(ref_files)} images): {js:.2e}")
    print(f"(cpus={os.cpu_count()}, load {os.getloadavg()[0]:.1f})")


def _best_s(fn, repeats: int = 7) -> float:
    """Fastest of ``repeats`` timed calls: on a shared machine the minimum is the least disturbed."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def physical_bound(spec: DescriptorSpec) -> None:
    """FFT FLOPs per image (5 N log2 N per complex transform) against this core's matmul peak."""
    from services.filters import GaborBank

    torch.set_num_threads(1)
    a = torch.randn(768, 768)  # ~1 GFLOP: short enough to run undisturbed between other processes' slices
    peak = 2 * 768**3 / _best_s(lambda: a @ a, repeats=25)
    bank = GaborBank(spec.gabor, spec.size)
    flops = 0.0
    for group in bank.plan(sampled=True):
        flops += 5 * group.n**2 * np.log2(group.n**2)  # forward transform of the padded luminance
        for scale in group.scales:
            m = scale.spectrum.shape[-1]
            flops += scale.spectrum.shape[0] * 5 * m**2 * np.log2(m**2)
    x = torch.randn(12, 256, 256, dtype=torch.complex64)  # one chunk's inverse FFTs of one full-size scale
    fft_rate = 12 * 5 * 256**2 * np.log2(256**2) / _best_s(lambda: torch.fft.ifft2(x), repeats=25)
    print(
        f"physical bound, 1 core: matmul peak {peak / 1e9:.1f} GFLOP/s; FFTs {flops / 1e6:.0f} MFLOP/image = "
        f"{flops / peak * 1e3:.2f} ms at peak; torch's FFT reaches {fft_rate / 1e9:.1f} GFLOP/s "
        f"({fft_rate / peak:.0%} of peak) = {flops / fft_rate * 1e3:.2f} ms/image"
    )
