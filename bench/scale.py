"""Scale curve of the search engine: N = 0.2 M .. 10 M sources, each with the settings the engine picks.

For each N, in a child process of its own (so its peak RSS is its own): a corpus of real CIFAR-100 gabor
descriptors plus small noise (``bench/search_data.py:ReplicatedCorpus``, generated block by block straight
into the engine's store on disk), ``SearchEngine.build(directory=...)`` with no settings given
(``tuning.plan``), then
- queries/s at k = 100: ``--batches`` calls of ``--batch`` held-out real descriptors each (after a warm-up);
- recall@100 on ``--truth-queries`` of them against the exact JS ranking over the whole store (below);
- build time, RSS (resident, split into anonymous and file-backed pages) after the queries, peak RSS, bytes on
  disk per source; and, across N, how each figure grows per doubling of N.

Exact reference: a full JS scan costs ~20 s per query per million sources here. The reference is exact
anyway: per bin, JS term / (sqrt p - sqrt q)^2 lies in [ln 2 / 2, 1 / 2] (both are 1-homogeneous; the
ratio is ln 2 / 2 at a zero bin and 1 / 2 when p = q), so summed with the weights,
(ln 2 / 2) * L2^2 <= JS <= L2^2 / 2 on the Hellinger embedding. One BLAS pass over the store keeps
each query's ``--truth-pool`` nearest embeddings, JS is computed exactly on those (the engine's own
``pairwise`` on the stored values), and a query's top 100 is certified exact when its 100th JS distance is
below (ln 2 / 2) x the pool's L2^2 cut-off: nothing outside the pool can rank higher. The number of certified
queries is reported, with recall over all queries and over the certified ones alone.
``--check-exact`` also compares it with the engine's ``exact=True`` scan on a few queries.

    PYTHONPATH=. .venv/bin/python bench/scale.py --n 200000 1000000 3000000 10000000
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_data import ReplicatedCorpus, real_descriptors  # noqa: E402
from retrieval_service.search import ann, tuning  # noqa: E402
from retrieval_service.search import store as store_mod  # noqa: E402
from retrieval_service.search.engine import SearchEngine  # noqa: E402
from services.divergence import hellinger_embedding, pairwise, validate_histograms  # noqa: E402

LOWER = math.log(2) / 2  # JS >= LOWER * (squared weighted Hellinger L2 on the embedding)


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def store_blocks(path: Path, shape, dtype, block: int = 65536):
    """(start, decoded float32 block) over a store file read with plain reads: page cache, not this
    process's RSS."""
    n, d, b = shape
    row = d * b * dtype.itemsize
    with open(path, "rb") as fh:
        for start in range(0, n, block):
            m = min(block, n - start)
            fh.seek(start * row)
            raw = np.frombuffer(fh.read(m * row), dtype=dtype).reshape(m, d, b)
            yield start, store_mod.decode(raw)


def read_through(path: Path, block: int = 64 << 20) -> float:
    """Read a file once, sequentially (into the page cache, not this process's RSS); returns seconds."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(block):
            pass
    return time.perf_counter() - started


def certified_truth(engine_dir: Path, meta: dict, w: np.ndarray, queries: np.ndarray, k: int, pool: int):
    """Exact top-k ids by JS (nq, k) and a per-query bool: certified by the Hellinger bound."""
    dtype = np.dtype(meta["histogram_dtype"])
    shape = (meta["size"], meta["dim"], meta["bins"])
    path = engine_dir / store_mod.store_file(dtype)
    zq = hellinger_embedding(queries, w)
    nq = len(zq)
    best_d = np.empty((nq, 0), np.float32)
    best_i = np.empty((nq, 0), np.int64)
    for start, h in store_blocks(path, shape, dtype):
        z = hellinger_embedding(h, w)
        d2 = (zq**2).sum(1)[:, None] + (z**2).sum(1)[None, :] - 2 * zq @ z.T
        best_d = np.concatenate([best_d, d2], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(h)), d2.shape)], axis=1)
        if best_d.shape[1] > pool + 1:
            keep = np.argpartition(best_d, pool, axis=1)[:, : pool + 1]
            best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    raw = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    ids, certified = np.empty((nq, k), np.int64), np.zeros(nq, bool)
    for i in range(nq):
        order = np.argsort(best_d[i], kind="stable")
        cut = best_d[i][order[-1]]  # the (pool + 1)-th: everything outside the pool is at least this far
        cand = np.sort(best_i[i][order[:-1]])
        js = pairwise("js", queries[i : i + 1], store_mod.decode(raw[cand]), w)[0]
        top = np.lexsort((cand, js))[:k]
        ids[i] = cand[top]
        certified[i] = js[top[-1]] < LOWER * max(cut - 1e-6, 0.0) * (1 - 1e-4)
    return ids, certified


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / k for a, b in zip(ids, truth, strict=True)]))


def build_key(n: int, d: int, b: int, args) -> tuple[dict, dict]:
    """What an engine directory was built from: (store key, index key). The store depends on the data
    only; the index on the settings ``tuning.plan`` picks (or the overrides) and ``ann``'s constants."""
    p = tuning.plan(n, d, b, codec=args.codec, nlist=args.nlist)
    store_key = dict(n=n, seed=args.seed, real=args.real, size=args.size, held_out=args.batch * args.batches,
                     store=p.store_dtype.str)
    return store_key, dict(kind=p.kind, codec=p.codec, nlist=p.nlist, **ann.index_settings(p.codec))


def open_or_build(n: int, base: np.ndarray, w: np.ndarray, out_dir: Path, args) -> tuple[SearchEngine, float,
                                                                                          str]:
    """The engine for N in ``out_dir``: reused when ``scale-key.json`` matches (``--rebuild`` forces a new
    one), re-indexed over the kept store when only the index settings differ, else built from scratch.
    Returns (engine, build seconds: writing the store + building the index, as recorded when they ran, how
    it was obtained)."""
    store_key, index_key = build_key(n, *base.shape[1:], args)
    key_file = out_dir / "scale-key.json"
    old = json.loads(key_file.read_text()) if key_file.exists() and not args.rebuild else {}
    if old.get("store") == store_key and old.get("index") == index_key and (out_dir / "engine.json").exists():
        return SearchEngine.load(out_dir, verify=False), old["build_s"], "reused"
    dtype = np.dtype(store_key["store"])
    shape = (n, *base.shape[1:])
    store_path = out_dir / store_mod.store_file(dtype)
    if old.get("store") == store_key and store_path.exists():
        how, store_s = "re-indexed", old["store_s"]  # the kept store, written by an earlier run
        source = store_mod.open_store(store_path, shape, dtype)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        started = time.perf_counter()
        sha = store_mod.write_store(store_path, ReplicatedCorpus(base, n, seed=args.seed), dtype,
                                    lambda block, _: validate_histograms(block, *shape[1:]))
        how, store_s = "built", time.perf_counter() - started
        source = store_mod.open_store(store_path, shape, dtype)
        source.sha256 = sha
    started = time.perf_counter()
    engine = SearchEngine.build(source, w, directory=out_dir, codec=args.codec, nlist=args.nlist)
    engine.save(out_dir)
    index_s = time.perf_counter() - started
    build_s = store_s + index_s
    key_file.write_text(json.dumps(dict(store=store_key, index=index_key, build_s=build_s, store_s=store_s,
                                        index_s=index_s)))
    return engine, build_s, how


def measure(n: int, base: np.ndarray, w: np.ndarray, queries: np.ndarray, args) -> dict:
    """Everything for one N (runs in a child process)."""
    out_dir = args.out / f"scale-{n}"
    out_dir.mkdir(parents=True, exist_ok=True)
    engine, build_s, how = open_or_build(n, base, w, out_dir, args)
    key = json.loads((out_dir / "scale-key.json").read_text())
    times = dict(build_s=build_s, store_s=key["store_s"], index_s=key["index_s"], engine=how)
    if args.build_only:  # measure later in a fresh process (--keep): serving RSS without the build's heap
        return dict(n=n, nlist=engine.nlist, load=os.getloadavg()[0], **times)
    # search-time settings: today's rule (a reused engine.json holds those of its build) unless overridden
    p = tuning.plan(n, *base.shape[1:], codec=args.codec, nlist=args.nlist)
    engine.nprobe, engine.rerank_factor = args.nprobe or p.nprobe, args.rerank or p.rerank_factor
    after_build = proc_status()
    k, batches = args.k, [queries[i * args.batch : (i + 1) * args.batch] for i in range(args.batches)]
    meta = json.loads((out_dir / "engine.json").read_text())
    store_path = out_dir / store_mod.store_file(np.dtype(meta["histogram_dtype"]))
    warm_s = read_through(store_path) if args.warm_store else None
    engine.search(queries[: args.batch // 8], k=k)  # warm-up
    started = time.perf_counter()
    results = [engine.search(b, k=k)[1] for b in batches]
    search_s = time.perf_counter() - started
    serving = proc_status()
    nt = args.truth_queries
    truth_file = out_dir / f"truth-{nt}-{args.truth_pool}.npz"  # exact for this store and these queries
    if truth_file.exists():
        kept = np.load(truth_file)
        truth, certified = kept["truth"], kept["certified"]
    else:
        truth, certified = certified_truth(out_dir, meta, w, queries[:nt], k, args.truth_pool)
        if args.keep:
            np.savez(truth_file, truth=truth, certified=certified)
    row = dict(
        n=n, kind=engine.kind, codec=engine.codec, nlist=engine.nlist, nprobe=engine.nprobe,
        rerank=engine.rerank_factor, store=meta["histogram_dtype"], **times,
        qps=args.batch * args.batches / search_s, recall=recall(results[0][:nt], truth),
        certified=int(certified.sum()), truth_queries=nt,
        recall_certified=recall(results[0][:nt][certified], truth[certified]) if certified.any() else None,
        rss_mb=serving["VmRSS"], rss_anon_mb=serving["RssAnon"], rss_file_mb=serving["RssFile"],
        peak_rss_mb=serving["VmHWM"], build_rss_mb=after_build["VmRSS"], store_read_s=warm_s,
        disk_bytes_per_source=sum(f.stat().st_size for f in out_dir.iterdir()) / n,
        load=os.getloadavg()[0],
    )
    sweep = []
    for nprobe in args.sweep_nprobe or [engine.nprobe]:
        for rerank in args.sweep_rerank or [engine.rerank_factor]:
            engine.nprobe, engine.rerank_factor = nprobe, rerank
            started = time.perf_counter()
            ids = engine.search(batches[0], k=k)[1]
            sweep.append(dict(nprobe=nprobe, rerank=rerank, qps=args.batch / (time.perf_counter() - started),
                              recall=recall(ids[:nt], truth)))
    if args.sweep_nprobe or args.sweep_rerank:
        row["sweep"] = sweep
    if args.check_exact:
        m = args.check_exact
        _, exact = engine.search(queries[:m], k=k, exact=True)
        row["truth_matches_exact_scan"] = bool(np.array_equal(exact, truth[:m]))
    if not args.keep:
        shutil.rmtree(out_dir)
    return row


def _child(n, base, w, queries, args, conn):
    try:
        conn.send(measure(n, base, w, queries, args))
    except BaseException as exc:  # reported by the parent
        conn.send({"n": n, "error": repr(exc)})


def growth(rows: list[dict], key: str) -> list[str]:
    """Factor per doubling of N between consecutive rows: (v2 / v1) ** (1 / log2(n2 / n1))."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        if a.get(key) and b.get(key):
            out.append(f"{(b[key] / a[key]) ** (1 / math.log2(b['n'] / a['n'])):.2f}")
        else:
            out.append("")
    return out


def table(rows: list[dict]) -> str:
    lines = ["| N | index | store | build s | queries/s | recall@100 (certified/queries) "
             "| RSS MB (anon + file) | peak RSS MB | disk B/source |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['kind']}-{r['codec']} nlist {r['nlist']} nprobe {r['nprobe']} "
            f"rerank {r['rerank']} "
            f"| {r['store']} | {r['build_s']:.0f} | {r['qps']:.1f} | {r['recall']:.4f} "
            f"({r['certified']}/{r['truth_queries']}) | {r['rss_mb']:.0f} ({r['rss_anon_mb']:.0f} + "
            f"{r['rss_file_mb']:.0f}) | {r['peak_rss_mb']:.0f} | {r['disk_bytes_per_source']:.0f} |")
    if len(rows) > 1:
        lines.append("\nGrowth per doubling of N (between consecutive N):")
        for key in ("build_s", "qps", "rss_mb", "peak_rss_mb", "disk_bytes_per_source"):
            lines.append(f"- {key}: " + ", ".join(growth(rows, key)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[200_000, 1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256, help="queries per search call")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--truth-queries", type=int, default=50)
    parser.add_argument("--truth-pool", type=int, default=16384, help="embedding neighbors JS is computed on")
    parser.add_argument("--check-exact", type=int, default=0, help="queries also run through exact=True")
    parser.add_argument("--sweep-nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--sweep-rerank", type=lambda s: [int(x) for x in s.split(",")], default=[])
    parser.add_argument("--real", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("bench_out"))
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="where the engines are built")
    parser.add_argument("--keep", action="store_true",
                        help="keep each engine directory (a later run with the same N, data and settings "
                        "reuses it; other index settings re-index the kept store)")
    parser.add_argument("--rebuild", action="store_true", help="build even when a kept engine matches")
    parser.add_argument("--warm-store", action="store_true",
                        help="read the store once before timing (steady state: the store in the page cache)")
    parser.add_argument("--build-only", action="store_true",
                        help="build (or find) the engines and stop; with --keep, a later run measures them")
    parser.add_argument("--codec", choices=tuning.CODECS, help="override the codec the engine picks")
    parser.add_argument("--nlist", type=int, help="override the number of IVF cells the engine picks")
    parser.add_argument("--nprobe", type=int, help="override the cells probed per query")
    parser.add_argument("--rerank", type=int, help="override the re-rank factor")
    parser.add_argument("--jsonl", type=Path, default=Path("bench_out/scale.jsonl"))
    args = parser.parse_args()

    real, w = real_descriptors(args.real, args.size, args.cache_dir)
    held_out = np.random.default_rng(0).permutation(len(real))
    n_q = args.batch * args.batches
    queries, base = real[held_out[:n_q]], real[held_out[n_q:]]
    print(f"{len(base)} real descriptors replicated, {n_q} held out as queries; cores {os.cpu_count()}, "
          f"load {os.getloadavg()}", flush=True)
    rows = []
    ctx = mp.get_context("fork")
    for n in args.n:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(n, base, w, queries, args, child))
        proc.start()
        row = parent.recv()
        proc.join()
        print(json.dumps(row), flush=True)
        with open(args.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if "error" not in row and not args.build_only:
            rows.append(row)
    print("\n" + table(rows), flush=True)


if __name__ == "__main__":
    main()
