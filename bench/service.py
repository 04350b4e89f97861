"""Benchmark of the HTTP retrieval service against the same work done in-process, in the same run.

Measures (a real server subprocess on loopback, real Redis):
1. /v1/neighbors, 256 descriptor queries, k=100: client wall time vs in-process ``engine.search`` (<= 1.3x);
2. 8 concurrent clients: queries/s and p50/p99 request latency;
3. result-cache hit vs miss on the same request;
4. /v1/sources/stream images/s for CIFAR PNGs and Imagewoof JPEGs (goal >= 2,000/s for small images);
5. for every Imagewoof training image, its top-50 neighbors in the CIFAR-100 index: which source classes win.

    .venv/bin/python bench/service.py --cifar-index bench_out/cifar100-gabor \\
        --woof-index bench_out/imagewoof-train-gabor64 --woof-dir ../shared/data/imagewoof/train
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.index.loaded import LoadedIndex  # noqa: E402
from retrieval_service.testing import live_server  # noqa: E402

# CIFAR-100 superclasses used to read the neighbor table (the dataset's own coarse labels).
GROUPS = {
    "large carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "medium mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "small mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "large omnivores/herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "vehicles 1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles 2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
    "household furniture": ["bed", "chair", "couch", "table", "wardrobe"],
}


@contextlib.contextmanager
def serving(index: Path, redis_url: str):
    """The real ``serve`` subprocess (tests/retrieval/live_server.py) with the benchmark's environment: OpenMP
    threads as the parent has them (the test helper pins one), quiet logs, its own Redis key prefix."""
    env = {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
        "SJFT_REDIS_PREFIX": f"sjft-bench-{uuid.uuid4().hex[:8]}",
        "SJFT_LOG_LEVEL": "warning",
        "SJFT_MAX_QUERIES_PER_REQUEST": "4096",
    }
    log = Path(tempfile.mkstemp(prefix="sjft-bench-", suffix=".log")[1])
    with live_server(index, log, redis_url=redis_url, env=env) as url:
        yield url


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


class Bodies:
    """Request bodies from pre-encoded descriptor JSON: the client's own encoding is not what we time."""

    def __init__(self, index: LoadedIndex):
        self.spec_hash = index.spec.spec_hash
        self.index = index
        self._snippets: dict[int, str] = {}

    def snippet(self, source_id: int) -> str:
        if source_id not in self._snippets:
            h = self.index.engine.histograms([source_id])[0]  # (D, B)
            self._snippets[source_id] = json.dumps(h.tolist())
        return self._snippets[source_id]

    def neighbors(self, ids, k: int, exclude: int | None) -> bytes:
        queries = ",".join(
            f'{{"id":"{n}","descriptor":{self.snippet(int(i))},"spec_hash":"{self.spec_hash}"}}'
            for n, i in enumerate(ids)
        )
        excl = "[]" if exclude is None else f"[{int(exclude)}]"
        return f'{{"queries":[{queries}],"k":{k},"exclude_source_ids":{excl}}}'.encode()


def post(client: httpx.Client, body: bytes) -> dict:
    r = client.post("/v1/neighbors", content=body, headers={"content-type": "application/json"})
    r.raise_for_status()
    return r.json()


def bench_overhead(index: LoadedIndex, client: httpx.Client, nq: int, k: int, repeats: int, rng) -> dict:
    """HTTP (client wall time incl. response decoding) vs in-process engine.search on the same queries."""
    ids = rng.choice(index.size, nq, replace=False)
    queries = index.engine.histograms(ids)  # (nq, D, B)
    bodies = Bodies(index)
    t = time.perf_counter()
    payload = [
        {"id": str(n), "descriptor": q.tolist(), "spec_hash": bodies.spec_hash} for n, q in enumerate(queries)
    ]
    encode_s = time.perf_counter() - t + median_time(lambda: json.dumps({"queries": payload, "k": k}), 1)[0]
    index.engine.search(queries, k=k)  # warm caches (page cache of the memory map, FAISS)
    fresh = iter(range(1, 10**9))

    def in_process():
        # The same exclusion the HTTP request carries, so both do identical work.
        index.engine.search(queries, k=k, exclude=[next(fresh) % index.size])

    def over_http():
        # A fresh exclusion each time: every request misses the cache and really searches.
        result = post(client, bodies.neighbors(ids, k, next(fresh) % index.size))
        assert len(result["results"]) == nq and not result["cached"]

    over_http()
    t_local, _ = median_time(in_process, repeats)
    t_http, _ = median_time(over_http, repeats)
    same = bodies.neighbors(ids, k, None)
    miss = post(client, same)
    t_hit, _ = median_time(lambda: post(client, same), repeats)
    hit = post(client, same)
    assert hit["cached"] and hit["results"] == miss["results"]
    return {
        "in_process_s": t_local,
        "http_s": t_http,
        "ratio": t_http / t_local,
        "hit_s": t_hit,
        "cache_speedup": t_http / t_hit,
        "server_miss_ms": miss["took_ms"],
        "server_hit_ms": hit["took_ms"],
        "client_encode_s": encode_s,
        "body_mb": len(same) / 1e6,
    }


def bench_concurrency(
    index: LoadedIndex, url: str, clients: int, per_request: int, k: int, seconds: float
) -> dict:
    bodies = Bodies(index)
    for i in range(index.size):
        bodies.snippet(i)  # encode before the clock starts
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop:
                ids = rng.choice(index.size, per_request, replace=False)
                body = bodies.neighbors(ids, k, int(rng.integers(index.size)))
                t = time.perf_counter()
                r = c.post("/v1/neighbors", content=body, headers={"content-type": "application/json"})
                r.json()
                dt = time.perf_counter() - t
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(r.status_code))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "queries_per_s": len(lat) * per_request / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "errors": collections.Counter(errors),
    }


def bench_stream(url: str, index: LoadedIndex, n: int, repeats: int) -> dict:
    ids = np.random.default_rng(2).integers(0, index.size, n).tolist()
    total_bytes = 0

    def fetch():
        nonlocal total_bytes
        size = 0
        with (
            httpx.Client(base_url=url, timeout=300) as c,
            c.stream("POST", "/v1/sources/stream", json={"ids": ids}) as r,
        ):
            r.raise_for_status()
            for chunk in r.iter_bytes():
                size += len(chunk)
        total_bytes = size

    fetch()  # warm the page cache
    t, _ = median_time(fetch, repeats)
    return {"images": n, "seconds": t, "images_per_s": n / t, "mb_per_s": total_bytes / t / 1e6}


def neighbor_classes(url: str, woof_dir: Path, k: int) -> tuple[collections.Counter, int]:
    files = sorted(p for p in woof_dir.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    counts: collections.Counter = collections.Counter()
    with httpx.Client(base_url=url, timeout=600) as c:
        for start in range(0, len(files), 50):
            batch = files[start : start + 50]
            qs = [{"id": str(p), "image_b64": base64.b64encode(p.read_bytes()).decode()} for p in batch]
            r = c.post("/v1/neighbors", json={"queries": qs, "k": k})
            r.raise_for_status()
            for res in r.json()["results"]:
                counts.update(n["class_name"] for n in res["neighbors"])
    return counts, len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar-index", type=Path, required=True)
    ap.add_argument("--woof-index", type=Path, required=True)
    ap.add_argument("--woof-dir", type=Path, default=REPO.parent / "shared" / "data" / "imagewoof" / "train")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrency run")
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    cifar = LoadedIndex.load(args.cifar_index)
    print(
        f"CIFAR index: {cifar.size} sources, {cifar.engine.kind}, spec size {cifar.spec.size}, "
        f"D={cifar.spec.dim} B={cifar.spec.bins}"
    )
    with serving(args.cifar_index, args.redis_url) as url:
        with httpx.Client(base_url=url, timeout=300) as client:
            o = bench_overhead(cifar, client, nq=min(256, cifar.size), k=100, repeats=args.repeats, rng=rng)
            print(f"\n[1] /v1/neighbors 256 descriptor queries, k=100 (median of {args.repeats}):")
            print(f"    in-process engine.search {o['in_process_s'] * 1000:8.1f} ms")
            print(
                f"    (request body {o['body_mb']:.1f} MB; encoding it client-side from numpy: "
                f"{o['client_encode_s'] * 1000:.0f} ms, not included below)"
            )
            print(
                f"    over HTTP (cache miss)   {o['http_s'] * 1000:8.1f} ms   "
                f"ratio {o['ratio']:.2f}x (goal <= 1.3x)"
            )
            print(
                f"[3] cache hit                {o['hit_s'] * 1000:8.1f} ms   "
                f"speed-up {o['cache_speedup']:.1f}x "
                f"(server-side took_ms miss {o['server_miss_ms']:.1f}, hit {o['server_hit_ms']:.1f})"
            )
        c = bench_concurrency(cifar, url, clients=8, per_request=32, k=100, seconds=args.seconds)
        print(
            f"[2] 8 concurrent clients, 32 queries/request, k=100, {args.seconds:.0f} s: "
            f"{c['queries_per_s']:.0f} queries/s, {c['requests']} requests, p50 {c['p50_ms']:.1f} ms, "
            f"p99 {c['p99_ms']:.1f} ms, errors {dict(c['errors'])}"
        )
        s = bench_stream(url, cifar, n=min(5000, cifar.size), repeats=args.repeats)
        print(
            f"[4] stream CIFAR PNGs: {s['images']} images in {s['seconds']:.2f} s = {s['images_per_s']:.0f} "
            f"images/s ({s['mb_per_s']:.1f} MB/s; goal >= 2,000/s)"
        )
        counts, n_files = neighbor_classes(url, args.woof_dir, k=50)

    woof = LoadedIndex.load(args.woof_index)
    with serving(args.woof_index, "") as woof_url:
        s = bench_stream(woof_url, woof, n=2000, repeats=args.repeats)
        print(
            f"[4] stream Imagewoof JPEGs: {s['images']} images (ids drawn from {woof.size}) in "
            f"{s['seconds']:.2f} s = {s['images_per_s']:.0f} images/s ({s['mb_per_s']:.1f} MB/s)"
        )

    total = sum(counts.values())
    print(f"\n[5] top-50 CIFAR-100 neighbors of {n_files} Imagewoof training images ({total} neighbors):")
    print("| rank | CIFAR-100 class | neighbors | share |\n|---|---|---|---|")
    for rank, (name, n) in enumerate(counts.most_common(15), 1):
        print(f"| {rank} | {name} | {n} | {n / total:.1%} |")
    print("\n| CIFAR-100 superclass | share of neighbors | share of corpus (chance) |\n|---|---|---|")
    classes = cifar.manifest.classes
    labels = cifar.manifest.all_labels()
    per_class = np.bincount(labels, minlength=len(classes)) / len(labels)
    for group, members in GROUPS.items():
        share = sum(counts[m] for m in members) / total
        chance = sum(per_class[classes.index(m)] for m in members if m in classes)
        print(f"| {group} | {share:.1%} | {chance:.1%} |")


if __name__ == "__main__":
    main()
