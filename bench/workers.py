"""Many trainers on one service: 1, 2 and 4 uvicorn workers under 8 and 32 concurrent clients.

Each client loops for ``--seconds``: ``POST /v1/neighbors`` (``--queries`` random source-id queries, k = 100,
a fresh random set each time so the Redis result cache does not answer) and ``POST /v1/sources/stream``
(``--stream-ids`` random images, the body read to the end), alternately. Reported per (workers, clients):
requests/s, p50 and p99 latency per route, errors (any non-2xx or transport error), and per worker process its
RSS, PSS and shared memory (/proc/PID/smaps_rollup: PSS splits shared pages between the processes mapping
them, so an index mapped once and shared shows PSS << RSS).

The clients are threads of this process and share the machine's cores with the server: on 2 cores the
numbers say what one box does under this load, not what the server alone could do.

    PYTHONPATH=. .venv/bin/python bench/workers.py --index bench_out/cifar100-gabor32 \\
        --workers 1 2 4 --clients 8 32 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval_service.testing import live_server  # noqa: E402

PID_HEADER = "x-worker-pid"


def smaps_rollup(pid: int) -> dict[str, float]:
    """Rss, Pss, Shared_Clean + Shared_Dirty of a process in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out["Rss"], "pss_mb": out["Pss"],
            "shared_mb": out.get("Shared_Clean", 0) + out.get("Shared_Dirty", 0)}


def worker_pids(base: str, want: int, attempts: int = 400) -> set[int]:
    """The PIDs of ``want`` workers, seen answering /readyz over fresh connections (bounded by attempts)."""
    seen: set[int] = set()
    for _ in range(attempts):
        r = httpx.get(f"{base}/readyz", timeout=30)
        if r.status_code == 200:
            seen.add(int(r.headers[PID_HEADER]))
        if len(seen) >= want:
            return seen
    raise RuntimeError(f"only {len(seen)} of {want} workers answered")


def client_loop(base: str, size: int, args, seed: int, stop: threading.Event, out: list) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base, timeout=60) as client:
        turn = seed
        while not stop.is_set():
            ids = [int(i) for i in rng.choice(size, args.queries if turn % 2 == 0 else args.stream_ids,
                                              replace=False)]
            route = "neighbors" if turn % 2 == 0 else "stream"
            started = time.perf_counter()
            try:
                if route == "neighbors":
                    body = {"queries": [{"id": str(i), "source_id": i} for i in ids], "k": args.k}
                    r = client.post("/v1/neighbors", json=body)
                else:
                    r = client.post("/v1/sources/stream", json={"ids": ids})
                ok = r.status_code < 300 and len(r.content) > 0
            except httpx.HTTPError:
                ok = False
            out.append((route, time.perf_counter() - started, ok))
            turn += 1


def load_run(base: str, size: int, clients: int, args) -> dict:
    stop, results, threads = threading.Event(), [], []
    for c in range(clients):
        out: list = []
        results.append(out)
        threads.append(threading.Thread(target=client_loop, args=(base, size, args, c, stop, out)))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)  # the measurement window itself, not a wait for readiness
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    rows = [r for out in results for r in out]
    report = {"requests_per_s": len(rows) / wall, "errors": sum(not ok for _, _, ok in rows)}
    for route in ("neighbors", "stream"):
        lat = sorted(s for name, s, ok in rows if name == route and ok)
        if lat:
            report[route] = {"per_s": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
                             "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--queries", type=int, default=8, help="source-id queries per /v1/neighbors call")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--stream-ids", type=int, default=32, help="images per /v1/sources/stream call")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--log-dir", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    size = json.loads((args.index / "index.json").read_text())["size"]
    print(f"index {args.index}: {size} sources; cores {os.cpu_count()}, load {os.getloadavg()}", flush=True)
    env = {"OMP_NUM_THREADS": "1", "SJFT_LOG_LEVEL": "warning", "SJFT_RATE_LIMIT_PER_MINUTE": "0",
           "SJFT_REDIS_PREFIX": f"sjft-bench-{uuid.uuid4().hex[:8]}"}
    for workers in args.workers:
        log = args.log_dir / f"workers-{workers}.log"
        with live_server(args.index, log, redis_url=args.redis_url, env=env,
                         extra_args=["--workers", str(workers)], deadline_s=300) as base:
            pids = worker_pids(base, workers)
            for clients in args.clients:
                report = load_run(base, size, clients, args)
                report.update(workers=workers, clients=clients, load=os.getloadavg()[0],
                              memory={pid: smaps_rollup(pid) for pid in sorted(pids)})
                print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
