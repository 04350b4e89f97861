"""Memory of a real server under a burst of worst-case image queries: RSS before, at peak, and after.

A small PNG can decode to a huge image (6000 x 6000 RGB: 120 KB of file, 144 MB of pixels). This starts
``python -m retrieval_service serve`` over a small index, sends ``--concurrent`` simultaneous
/v1/neighbors queries each carrying such an image, and reads the server's memory from /proc: VmRSS before,
VmHWM (peak resident, reset through /proc/<pid>/clear_refs just before the burst) and VmRSS after.
``--ungated`` runs the same burst a second time on a server whose decode gate is opened wide
(SJFT_DECODE_SLOTS / SJFT_DECODE_MEMORY_MB), the reference the budget is compared with.

    .venv/bin/python bench/memory.py                      # 32 different 6000x6000 RGB PNGs, default limits
    .venv/bin/python bench/memory.py --mode RGBA --side 6324 --ungated

The budget (RELIABILITY.md): peak at most 1 GiB above the idle server, measured from a cold start (no query
before the burst) with a different image per request and the result cache off (SJFT_CACHE_TTL_S=0).
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.testdata import build_test_index  # noqa: E402
from retrieval_service.testing import live_server  # noqa: E402

MB = 1 << 20
BUDGET_ABOVE_IDLE = 1 << 30


def worst_png(side: int, mode: str, variant: int = 0) -> bytes:
    """A highly compressible PNG of ``side`` x ``side`` pixels: small request, huge decode. Each ``variant``
    has other pixels, so no two requests of a burst share a cached answer."""
    tile = ((np.indices((64, 64)).sum(axis=0) + 7 * variant) % 256).astype(np.uint8)
    pixels = np.tile(tile, (-(-side // 64), -(-side // 64)))[:side, :side]
    img = Image.fromarray(np.stack([pixels, pixels[::-1], pixels.T], -1))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def server_pid(base: str) -> int:
    """The pid listening on the server's port (the serve subprocess), from /proc/net/tcp + fd links."""
    port = int(base.rsplit(":", 1)[1])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().as_posix() in {f"socket:[{i}]" for i in inodes}:
                    return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no process listens on port {port}")


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def burst(base: str, images: list[str], concurrent: int) -> tuple[Counter, float, float]:
    """``concurrent`` requests released at once, each with its own image (base64); (status counts, wall
    seconds, slowest 429 in seconds: refusals should come at once, not after the decode wait)."""
    statuses: Counter = Counter()
    start = threading.Barrier(concurrent + 1)
    lock = threading.Lock()
    slowest_429 = [0.0]

    def one(i: int) -> None:
        body = {"queries": [{"id": f"q{i}", "image_b64": images[i % len(images)]}], "k": 5}
        with httpx.Client(timeout=600) as client:
            start.wait()
            t0 = time.perf_counter()
            status = client.post(f"{base}/v1/neighbors", json=body).status_code
            took = time.perf_counter() - t0
        with lock:
            statuses[status] += 1
            if status == 429:
                slowest_429[0] = max(slowest_429[0], took)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrent)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return statuses, time.perf_counter() - t0, slowest_429[0]


def measure(index: Path, log: Path, images: list[str], concurrent: int, env: dict) -> dict:
    """A COLD server: "idle" is read as soon as /readyz answers, before any query has run (a warm-up query
    would hide whatever the first image query allocates, as the first measurement of this budget did)."""
    with live_server(index, log, env={"SJFT_LOG_LEVEL": "warning", "SJFT_CACHE_TTL_S": "0", **env}) as base:
        pid = server_pid(base)
        idle = status_kb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        statuses, wall, slowest_429 = burst(base, images, concurrent)
        peak = status_kb(pid, "VmHWM")
        after = status_kb(pid, "VmRSS")
        alive = httpx.get(f"{base}/healthz").status_code
    return {"idle": idle, "peak": peak, "after": after, "statuses": dict(statuses), "wall": wall,
            "health": alive, "slowest_429": slowest_429}


def report(name: str, r: dict) -> None:
    print(
        f"{name:8s} idle {r['idle'] / MB:7.0f} MB | peak {r['peak'] / MB:7.0f} MB "
        f"(+{(r['peak'] - r['idle']) / MB:.0f}) | after {r['after'] / MB:7.0f} MB "
        f"(+{(r['after'] - r['idle']) / MB:.0f}) | {r['wall']:.1f} s | statuses {r['statuses']} | "
        f"slowest 429 {r['slowest_429']:.2f} s | healthz {r['health']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--side", type=int, default=6000, help="image side in pixels (default limit: 40 Mpx)")
    parser.add_argument("--mode", default="RGB", choices=("RGB", "RGBA", "L", "P"))
    parser.add_argument("--ungated", action="store_true", help="also run with the decode gate opened wide")
    args = parser.parse_args()

    pngs = [worst_png(args.side, args.mode, variant) for variant in range(args.concurrent)]
    print(f"query images: {args.concurrent} different {args.side}x{args.side} {args.mode} PNGs, "
          f"{len(pngs[0]) / 1024:.0f} KB each; {args.concurrent} concurrent requests, cold server")
    payload = [base64.b64encode(data).decode() for data in pngs]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        index = build_test_index(Path(tmp), per_class=4, size=224, bins=16)
        gated = measure(index, Path(tmp) / "gated.log", payload, args.concurrent, {})
        report("gated", gated)
        if args.ungated:
            wide = {"SJFT_DECODE_SLOTS": "1024", "SJFT_DECODE_MEMORY_MB": str(1 << 20)}
            report("ungated", measure(index, Path(tmp) / "ungated.log", payload, args.concurrent, wide))
    over = gated["peak"] - gated["idle"]
    verdict = "within" if over <= BUDGET_ABOVE_IDLE else "OVER"
    print(f"budget: peak {over / MB:.0f} MB above idle, {verdict} the {BUDGET_ABOVE_IDLE / MB:.0f} MB budget")
    return 0 if over <= BUDGET_ABOVE_IDLE else 1


if __name__ == "__main__":
    sys.exit(main())
