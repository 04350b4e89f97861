"""Resumable index build: enumerate -> fit bin edges -> extract histogram shards -> assemble -> atomic rename.

All work happens in ``<out>.partial/`` next to ``<out>`` (protocol in ``staging.py``). ``spec.json`` (with
the fitted edges) is saved before extraction, so a resumed build reuses the same edges, and every finished
shard is kept. Killed at any point (even ``kill -9``) and started again, the build produces the same index
(histograms, ids, manifest, spec_hash) as an uninterrupted run with the same settings.

Source ids: candidates are enumerated in sorted order (``corpus.py``); unreadable files are skipped and
reported in ``build_report.json``, and the readable ones are numbered ``0..N-1`` in that order. The same
corpus (same files, same bytes) therefore always gets the same ids, and an id is also the row of its
descriptor in the search engine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from retrieval_service.build.staging import (
    REPORT_FILE,
    BuildError,
    check_out,
    commit,
    corpus_fingerprint,
    is_complete,
    prepare_partial,
    write_json,
)
from retrieval_service.build.stamps import invalidate_changed_shards
from retrieval_service.index.corpus import Corpus, enumerate_corpus
from retrieval_service.index.loaded import INDEX_FORMAT, fsync_path
from retrieval_service.index.manifest import write_manifest
from retrieval_service.version import __version__
from services.errors import SJFTError
from services.fileio import file_sha256
from services.spec import DescriptorSpec

log = logging.getLogger("retrieval_service.build.builder")


@dataclass
class BuildReport:
    out: str
    size: int  # images in the index
    candidates: int  # image files found
    skipped: list[dict]  # {"path", "member", "reason"}
    spec_hash: str
    shards: int
    resumed_shards: int
    timings_s: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0  # extraction throughput of this run

    def to_dict(self) -> dict:
        return asdict(self)


def build_index(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    bank: str = "gabor",
    conv_weights: str | os.PathLike | None = None,
    conv_arch: str = "alexnet",
    conv_layers: int = 1,
    bins: int = 16,
    size: int = 224,
    device: str | None = None,
    workers: int = 2,
    batch_size: int = 64,
    shard_size: int = 4096,
    edge_sample: int = 2000,
    seed: int = 0,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    force: bool = False,
    progress: bool = True,
    ray: str | None = None,
    ray_gpus_per_task: float = 0.0,
    image_column: str = "image",
    label_column: str = "label",
    follow_symlinks: bool = False,
) -> BuildReport:
    """Build (or resume building) the index of ``source`` into ``out``; raises :class:`BuildError`.

    ``ray``: extract the shards as Ray tasks (``ray_runner.py``: "local", "auto" or a cluster address)
    instead of ``workers`` local processes; the index is the same byte for byte, and either kind of
    build resumes the other's finished shards. On CPU, ``workers`` > 0 spawns that many processes: a
    script calling this needs the usual ``if __name__ == "__main__":`` guard.

    ``nlist`` / ``nprobe``: the IVF cells and the cells probed per query, overriding what the engine picks
    from N (``search/tuning.py``); they change only the assembly, so a resumed build keeps its shards.

    The phases: enumerate -> fit bin edges (once) -> extract shards (resumable) -> assemble -> rename.
    """
    started = time.perf_counter()
    _check_arguments(bank, workers=workers, batch_size=batch_size, shard_size=shard_size,
                     edge_sample=edge_sample, bins=bins, size=size, nlist=nlist, nprobe=nprobe)
    out = Path(out).absolute()
    partial = out.with_name(out.name + ".partial")
    check_out(out, force)

    timings: dict[str, float] = {}
    corpus = _enumerate(source, image_column, label_column, follow_symlinks)
    _check_nlist(nlist, len(corpus.records))  # before extraction: unreadable files only lower the count
    # torch is imported only now, so a wrong --source or --out fails in a fraction of a second.
    from services.extract import make_spec, resolve_device

    try:
        spec0 = make_spec(
            bank, size=size, bins=bins, conv_weights=conv_weights, arch=conv_arch, layers=conv_layers
        )
        torch_device = resolve_device(device)
    except (SJFTError, ValueError) as exc:
        raise BuildError(str(exc)) from exc
    timings["enumerate"] = time.perf_counter() - started

    settings = {
        "bank": bank,
        "conv_arch": conv_arch,
        "conv_layers": conv_layers,
        "bins": bins,
        "size": size,
        "edge_sample": edge_sample,
        "seed": seed,
        "shard_size": shard_size,
    }
    fingerprint = corpus_fingerprint(corpus, spec0, settings)
    prepare_partial(partial, fingerprint, settings)
    if is_complete(partial):
        log.info("%s already holds a finished index: renaming it into place", partial)
        commit(partial, out, force)
        return BuildReport(**json.loads((out / REPORT_FILE).read_text())["report"])

    t = time.perf_counter()
    spec = _fitted_spec(partial / "spec.json", corpus, spec0, torch_device, conv_weights, edge_sample, seed,
                        batch_size, workers)
    timings["fit_edges"] = time.perf_counter() - t

    # Resume reuses a finished shard only if its files are unchanged (same size, mtime and ctime): stamps.py.
    invalidate_changed_shards(partial / "shards", corpus.root, corpus.records, shard_size)
    t = time.perf_counter()
    if ray is not None:
        from retrieval_service.build.ray_runner import extract_shards_on_ray

        extracted, resumed = extract_shards_on_ray(
            corpus, spec, partial / "shards", conv_weights, shard_size, batch_size, ray, progress,
            cpus=workers or None, gpus_per_task=ray_gpus_per_task,
        )
    else:
        from retrieval_service.build.extraction import cpu_threads, extract_shards

        with cpu_threads(spec, torch_device):
            extracted, resumed = extract_shards(
                corpus, spec, partial / "shards", torch_device, conv_weights,
                shard_size, batch_size, workers, progress,
            )
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    size, skipped, engine_sums = _assemble(corpus, spec, partial, shard_size, kind, torch_device, progress,
                                           nlist=nlist, nprobe=nprobe)
    timings["assemble"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    report = BuildReport(
        out=str(out),
        size=size,
        candidates=len(corpus.records) + len(corpus.skipped),
        skipped=skipped,
        spec_hash=spec.spec_hash,
        shards=-(-len(corpus.records) // shard_size),  # ceil
        resumed_shards=resumed,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        images_per_s=round(extracted / timings["extract"], 2) if extracted else 0.0,
    )
    _finish(partial, out, force, report, corpus, spec, engine_sums, conv_weights, fingerprint)
    return report


def _check_arguments(bank: str, **lower_bounded: int | None) -> None:
    """BuildError naming the first bad argument (before anything slow happens); None: not given."""
    minimum = {"workers": 0, "batch_size": 1, "shard_size": 1, "edge_sample": 1, "bins": 2, "size": 8,
               "nlist": 1, "nprobe": 1}
    for name, value in lower_bounded.items():
        if value is not None and value < minimum[name]:
            raise BuildError(f"{name} must be >= {minimum[name]}, got {value}")
    if bank not in ("gabor", "conv"):
        raise BuildError(f"unknown bank {bank!r} (gabor or conv)")


def _fitted_spec(spec_path: Path, corpus: Corpus, spec0: DescriptorSpec, torch_device, conv_weights,
                 edge_sample: int, seed: int, batch_size: int, workers: int) -> DescriptorSpec:
    """The spec with fitted bin edges, fitted once and saved: a resumed build keeps the first run's edges."""
    from retrieval_service.build.extraction import cpu_threads, fit_spec_edges

    if spec_path.is_file():
        spec = DescriptorSpec.load(spec_path)
        log.info("resuming with the fitted edges in %s (spec %s)", spec_path, spec.spec_hash[:12])
        return spec
    try:
        with cpu_threads(spec0, torch_device):
            spec = fit_spec_edges(
                corpus, spec0, torch_device, conv_weights, edge_sample, seed, batch_size, workers
            )
    except ValueError as exc:
        raise BuildError(f"could not fit bin edges: {exc}") from exc
    spec.save(spec_path)
    fsync_path(spec_path)
    return spec


def _enumerate(source, image_column: str, label_column: str, follow_symlinks: bool) -> Corpus:
    """The corpus's candidate images, or a BuildError that says what was expected."""
    try:
        corpus = enumerate_corpus(
            source, image_column=image_column, label_column=label_column, follow_symlinks=follow_symlinks
        )
    except SJFTError as exc:
        raise BuildError(str(exc)) from exc
    if not corpus.records:
        rejected = f"; {len(corpus.skipped)} rejected, e.g. {corpus.skipped[0]}" if corpus.skipped else ""
        raise BuildError(
            f"no images found in {source} (expected an ImageFolder tree <class>/<image> or .tar shards)"
            + rejected
        )
    log.info(
        "source %s (%s): %d candidate images, %d classes",
        corpus.root,
        corpus.kind,
        len(corpus.records),
        len(corpus.classes),
    )
    return corpus


def _finish(partial: Path, out: Path, force: bool, report: BuildReport, corpus: Corpus, spec: DescriptorSpec,
            engine_sums: dict[str, str], conv_weights, fingerprint: str) -> None:
    """Write the report and ``index.json`` into the partial directory, then rename it into place."""
    write_json(
        partial / REPORT_FILE,
        {"report": report.to_dict(), "source_root": str(corpus.root), "fingerprint": fingerprint},
    )
    _write_index_json(partial, corpus, spec, report.size, engine_sums, conv_weights)
    commit(partial, out, force)
    log.info(
        "index of %d images written to %s (%d skipped) in %.1f s",
        report.size,
        out,
        len(report.skipped),
        report.timings_s["total"],
    )


def _check_nlist(nlist: int | None, images: int) -> None:
    if nlist is not None and nlist > images:
        raise BuildError(f"nlist {nlist} exceeds the {images} indexed images (a cell needs one at least)")


def _assemble(
    corpus: Corpus, spec: DescriptorSpec, partial: Path, shard_size: int, kind: str, device, progress: bool,
    nlist: int | None = None, nprobe: int | None = None,
) -> tuple[int, list[dict], dict[str, str]]:
    """Shards -> engine files and manifest in ``partial``; returns (size, skipped, engine checksums)."""
    from retrieval_service.build.extraction import load_shards
    from retrieval_service.search.engine import SearchEngine

    try:
        shards = load_shards(partial / "shards", len(corpus.records), shard_size, spec.dim, spec.bins)
    except RuntimeError as exc:
        raise BuildError(str(exc)) from exc
    kept = np.flatnonzero(shards.ok)
    skipped = list(corpus.skipped) + [
        {"path": corpus.records[p].path, "member": corpus.records[p].member, "reason": str(shards.reasons[i])}
        for i, p in enumerate(shards.positions)
        if not shards.ok[i]
    ]
    if not len(kept):
        raise BuildError(
            f"none of the {len(shards.ok)} images could be read, e.g. {skipped[0]['path']}: "
            f"{skipped[0]['reason']}"
        )
    records = [
        replace(
            corpus.records[shards.positions[i]],
            source_id=new_id,
            sha256=str(shards.sha256[i]),
            width=int(shards.width[i]),
            height=int(shards.height[i]),
            # Table rows are known by their bytes only: format and size come from the decoded header.
            ext=corpus.records[shards.positions[i]].ext or str(shards.ext[i]),
            nbytes=corpus.records[shards.positions[i]].nbytes or int(shards.nbytes[i]),
        )
        for new_id, i in enumerate(kept)
    ]
    log.info("assembling the search engine over %d descriptors", len(kept))
    _check_nlist(nlist, len(kept))
    engine = SearchEngine.build(
        shards.hists[kept],  # float16 (N, D, B): the engine stores float16, so nothing is rounded twice
        spec.weights_array(),
        kind=kind,
        nlist=nlist,
        nprobe=nprobe,
        device=str(device),
        progress=progress,
    )  # (N, D, B)
    engine_sums = engine.save(partial)
    write_manifest(partial / "manifest.sqlite", records, corpus.classes)
    return len(records), skipped, dict(engine_sums)


def _write_index_json(
    partial: Path,
    corpus: Corpus,
    spec: DescriptorSpec,
    size: int,
    engine_sums: dict[str, str],
    conv_weights: str | os.PathLike | None,
) -> None:
    """Checksums of every other file, fsynced first: writing index.json commits the partial directory."""
    names = ["spec.json", "manifest.sqlite", REPORT_FILE]
    checksums = {name: file_sha256(partial / name) for name in names} | engine_sums
    for name in checksums:
        fsync_path(partial / name)
    info = {
        "format": INDEX_FORMAT,
        "size": size,
        "dim": spec.dim,
        "bins": spec.bins,
        "bank": spec.bank,
        "spec_hash": spec.spec_hash,
        "classes": corpus.classes,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "source_root": str(corpus.root),
        "source_kind": corpus.kind,
        "checksums": dict(sorted(checksums.items())),
        # The service needs the conv weights to describe image queries; spec.json pins their sha256.
        "conv_weights": str(Path(conv_weights).absolute()) if conv_weights else None,
    }
    write_json(partial / "index.json", info)
    fsync_path(partial)
