"""Candidate-index variants of the large-corpus tier, compared on one store in one run.

One uint8 store of N replicated real descriptors (``bench/search_data.py``; kept under ``--out`` and reused),
the certified exact JS truth of ``--truth-queries`` queries (``bench/scale.py:certified_truth``; cached), then
for each variant a FAISS index over the Hellinger embedding (cached per variant) and, for each (nprobe,
rerank) pair, one call of ``--batch`` queries through ``SearchEngine``: queries/s, the share of the time
FAISS takes, and recall@100. Run single-threaded (``OMP_NUM_THREADS=1``) so variants compare as ratios on a
shared box.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/search_variants.py --n 1000000 \
        --variants pq64 fs64 --nprobe 24,48 --rerank 4,8,16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import certified_truth, recall  # noqa: E402
from bench.search_data import ReplicatedCorpus, real_descriptors  # noqa: E402
from retrieval_service.search import ann, tuning  # noqa: E402
from retrieval_service.search.engine import SearchEngine  # noqa: E402
from retrieval_service.search.store import U8, open_store, write_store  # noqa: E402
from services.divergence import hellinger_embedding  # noqa: E402

VARIANTS = {  # name: (ann codec, ann constants set while the index is built)
    "pq64": ("pq", {"PQ_BYTES": 64}),  # the PQ tier: PCA-128, 64 one-byte codes
    "pq32": ("pq", {"PQ_BYTES": 32}),  # half the bytes scanned per candidate, coarser order
    "fs64": ("pqfs", {"FS_SUBQUANTIZERS": 64}),  # fast-scan: 64 four-bit codes
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--variants", nargs="+", default=["pq64", "fs64"])
    parser.add_argument("--nlist", type=int, default=0, help="0: the engine's rule for N")
    parser.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[24, 48])
    parser.add_argument("--rerank", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--truth-queries", type=int, default=50)
    parser.add_argument("--truth-pool", type=int, default=65536)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    real, w = real_descriptors(3000, 64, args.out)
    held_out = np.random.default_rng(0).permutation(len(real))
    queries, base = real[held_out[: args.batch]], real[held_out[512:]]  # bench/scale.py's split
    d, b = real.shape[1:]
    root = args.out / f"variants-{args.n}"
    root.mkdir(parents=True, exist_ok=True)
    store_path = root / "histograms.u8"
    if not store_path.exists():
        started = time.perf_counter()
        write_store(store_path, ReplicatedCorpus(base, args.n, seed=0), U8)
        print(f"store written in {time.perf_counter() - started:.0f} s", flush=True)
    store = open_store(store_path, (args.n, d, b), U8)
    truth_path = root / f"truth-{args.truth_queries}-{args.truth_pool}.npz"
    if truth_path.exists():
        t = np.load(truth_path)
        truth, certified = t["truth"], t["certified"]
    else:
        meta = {"histogram_dtype": U8.str, "size": args.n, "dim": d, "bins": b}
        truth, certified = certified_truth(root, meta, w, queries[: args.truth_queries], 100, args.truth_pool)
        np.savez(truth_path, truth=truth, certified=certified)
    nt = args.truth_queries
    print(f"truth: {int(certified.sum())}/{nt} certified", flush=True)
    nlist = args.nlist or tuning.pq_nlist(args.n)
    rows = []
    for name in args.variants:
        codec, constants = VARIANTS[name]
        index_path = root / f"{name}-{nlist}.faiss"
        if index_path.exists():
            index, build_s = faiss.read_index(str(index_path)), None
        else:
            started = time.perf_counter()
            saved = {k: getattr(ann, k) for k in constants}
            for k, v in constants.items():
                setattr(ann, k, v)
            index = ann.build_index(store, w, "ivf", nlist, codec, progress=False)
            for k, v in saved.items():
                setattr(ann, k, v)
            build_s = time.perf_counter() - started
            faiss.write_index(index, str(index_path))
            store.release()
        for nprobe in args.nprobe:
            for rerank in args.rerank:
                engine = SearchEngine(store, w, index, kind="ivf", nprobe=nprobe, rerank_factor=rerank,
                                      codec=codec)
                engine.search(queries[:16], k=100)  # warm-up
                codes_scanned = args.n * min(nprobe, nlist) / nlist
                z = hellinger_embedding(queries, w)
                started = time.perf_counter()
                engine._index.search(z, rerank * 128, nprobe)
                faiss_s = time.perf_counter() - started
                started = time.perf_counter()
                ids = engine.search(queries, k=100)[1]
                total_s = time.perf_counter() - started
                row = dict(variant=name, nlist=nlist, nprobe=nprobe, rerank=rerank, build_s=build_s,
                           codes_scanned=round(codes_scanned),
                           qps=len(queries) / total_s, faiss_share=faiss_s / total_s,
                           recall=recall(ids[:nt], truth),
                           recall_certified=recall(ids[:nt][certified], truth[certified]))
                print(json.dumps(row), flush=True)
                rows.append(row)
    with open(root / "variants.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
