"""Search benchmark: two-stage search vs FAISS's own JS flat search and our exact scan, in the same run.

For each N: a corpus replicated from real CIFAR-100 gabor descriptors (bench/search_data.py), held-out real
descriptors as queries, k = 100. Reports queries/s, recall@k against our exact scan, build time and memory
(RSS growth during the build, bytes of the saved engine files) for:
- ``faiss-js``: ``faiss.IndexFlat(d, METRIC_JensenShannon)`` on the eps-smoothed (FAISS gives NaN on empty
  bins), w-scaled concatenated histograms; slow, so timed on ``--faiss-js-queries`` queries and extrapolated;
- ``exact``: ``SearchEngine.search(exact=True)``, timed on the ``--gt-queries`` whose answers are the truth;
- ``flat`` / ``ivf``: the two-stage search (FAISS candidates on the Hellinger embedding + exact re-rank).

    PYTHONPATH=. .venv/bin/python bench/search.py --n 200000 1000000 --queries 256 --k 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_data import real_descriptors, replicate  # noqa: E402
from retrieval_service.search.engine import DEFAULT_RERANK_FACTOR, SearchEngine  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / k for a, b in zip(ids, truth, strict=True)]))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def faiss_js(corpus: np.ndarray, queries: np.ndarray, w: np.ndarray, k: int, eps: float = 1e-6):
    """FAISS's generic JS flat index: (seconds per query, ids, index bytes)."""
    def prep(h):
        h = h + np.float32(eps)
        h = h / h.sum(axis=2, keepdims=True)
        return np.ascontiguousarray((h * w[:, None]).reshape(len(h), -1), dtype=np.float32)

    index = faiss.IndexFlat(corpus.shape[1] * corpus.shape[2], faiss.METRIC_JensenShannon)
    for start in range(0, len(corpus), 65536):
        index.add(prep(corpus[start : start + 65536]))
    (_, ids), seconds = timed(index.search, prep(queries), k)
    return seconds / len(queries), ids, index.ntotal * index.d * 4


def engine_row(name, corpus, w, queries, truth, k, args, **build):
    rss0 = rss_mb()
    engine, build_s = timed(SearchEngine.build, corpus, w, **build)
    rss_delta = rss_mb() - rss0
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        engine.save(tmp)
        disk = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    engine.search(queries[:4], k=k)  # warm-up
    (_, ids), seconds = timed(engine.search, queries, k=k)
    rows = [dict(method=name, qps=len(queries) / seconds, recall=recall(ids[: len(truth)], truth),
                 build_s=build_s, rss_mb=rss_delta, index_mb=disk,
                 note=f"kind={engine.kind} nlist={engine.nlist} nprobe={engine.nprobe} "
                      f"rerank={engine.rerank_factor} codec={engine.codec if engine.kind == 'ivf' else '-'}")]
    for nprobe in args.sweep_nprobe if engine.kind == "ivf" else [engine.nprobe]:
        for rf in args.sweep_rerank:
            engine.nprobe, engine.rerank_factor = nprobe, rf
            (_, ids), seconds = timed(engine.search, queries, k=k)
            rows.append(dict(method=f"  {name} sweep", qps=len(queries) / seconds,
                             recall=recall(ids[: len(truth)], truth), note=f"nprobe={nprobe} rerank={rf}"))
    del engine
    return rows


def run(n: int, base: np.ndarray, w: np.ndarray, queries: np.ndarray, args) -> list[dict]:
    k = args.k
    corpus, gen_s = timed(replicate, base, n, seed=n)
    print(f"\n== N = {n:,} (corpus generated in {gen_s:.0f} s), {len(queries)} queries, k = {k}", flush=True)
    rows = []
    exact_engine = SearchEngine(
        np.asarray(corpus, dtype=np.float16), w, faiss.IndexFlatL2(corpus.shape[1] * corpus.shape[2]),
        kind="flat", nprobe=0, rerank_factor=1, codec="-")  # exact scan needs no FAISS index
    gt_q = queries[: args.gt_queries]
    (_, truth), seconds = timed(exact_engine.search, gt_q, k=k, exact=True)
    rows.append(dict(method="exact scan", qps=len(gt_q) / seconds, recall=1.0,
                     note=f"timed on {len(gt_q)} queries; the ground truth"))
    print(rows[-1], flush=True)
    del exact_engine
    if n <= args.faiss_js_max_n:
        fq = queries[: args.faiss_js_queries]
        per_query, ids, nbytes = faiss_js(corpus, fq, w, k)
        m = min(len(fq), len(truth))
        rows.append(dict(method="faiss-js flat", qps=1 / per_query, recall=recall(ids[:m], truth[:m]),
                         index_mb=nbytes / 2**20, note=f"timed on {len(fq)} queries, extrapolated"))
        print(rows[-1], flush=True)
    for kind in args.kinds:
        build = dict(kind=kind, rerank_factor=args.rerank_factor, codec=args.codec)
        if kind == "ivf":
            build.update(nlist=args.nlist, nprobe=args.nprobe)
        new = engine_row(f"two-stage {kind}", corpus, w, queries, truth, k, args, **build)
        print(*new, sep="\n", flush=True)
        rows += new
    return rows


def table(n: int, rows: list[dict]) -> str:
    lines = [f"N = {n:,}", "| method | queries/s | recall@k | build s | RSS delta MB | index MB | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['method']} | {fmt(r.get('qps'), '.2f')} | {fmt(r.get('recall'), '.4f')} | "
                     f"{fmt(r.get('build_s'), '.1f')} | {fmt(r.get('rss_mb'), '.0f')} | "
                     f"{fmt(r.get('index_mb'), '.0f')} | {r.get('note', '')} |")
    peer = next((r for r in rows if r["method"] == "faiss-js flat"), None)
    if peer:
        for r in rows:
            if r["method"].startswith("two-stage") or r["method"] == "exact scan":
                lines.append(f"- {r['method']}: {r['qps'] / peer['qps']:.0f}x FAISS JS flat "
                             f"(recall@k {r['recall']:.4f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--gt-queries", type=int, default=64, help="queries given an exact scan (the truth)")
    parser.add_argument("--faiss-js-queries", type=int, default=8)
    parser.add_argument("--faiss-js-max-n", type=int, default=200_000)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf"], choices=["flat", "ivf"])
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--rerank-factor", type=int, default=DEFAULT_RERANK_FACTOR)
    parser.add_argument("--codec", default="sq8", choices=["sq8", "flat"])
    parser.add_argument("--sweep-nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--sweep-rerank", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--real", type=int, default=3000, help="real descriptors (incl. queries)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cache-dir", type=Path, default=Path("bench_out"))
    parser.add_argument("--tmp", default=None, help="where to save engines to measure their files")
    args = parser.parse_args()

    real, w = real_descriptors(args.real, args.size, args.cache_dir)
    rng = np.random.default_rng(0)
    held_out = rng.permutation(len(real))
    queries, base = real[held_out[: args.queries]], real[held_out[args.queries :]]
    print(f"{len(real)} real descriptors (48 x 16), {len(base)} replicated, {len(queries)} held out as "
          f"queries; cores: {os.cpu_count()}, load average: {os.getloadavg()}")
    for n in args.n:
        rows = run(n, base, w, queries, args)
        print("\n" + table(n, rows) + f"\nload average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
