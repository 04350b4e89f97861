"""Serve this machine's local pip wheels to image builds, on loopback, as one find-links page.

    python scripts/containers/wheelhouse.py --port 3141          # until killed
    python scripts/containers/wheelhouse.py --list               # what it would serve

A machine without a registry mirror often keeps wheels on disk and points pip at them with ``file://``
indexes or find-links directories (pip's own configuration). A ``docker build`` cannot see those paths. This
server reads the same pip configuration, collects every wheel those local locations name, and serves them
under one flat page that an image's pip uses as ``find-links`` (the stand-in base image's pip.conf says so).
pip ranks find-links candidates before index candidates of the same version, so the multi-GB torch wheel
comes from this disk, not the network; anything not on disk still comes from the configured index.
"""

from __future__ import annotations

import argparse
import html
import http.server
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

HREF = re.compile(r'href="([^"#]+)')


def pip_locations() -> list[str]:
    """The find-links and extra-index-url values of pip's configuration (files and environment)."""
    command = [sys.executable, "-m", "pip", "config", "list"]
    out = subprocess.run(command, capture_output=True, text=True).stdout
    values: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] in ("find-links", "extra-index-url", "index-url"):
            values += value.strip().strip("'\"").split()
    return values


def local_wheels(locations: list[str]) -> dict[str, Path]:
    """File name -> path of every wheel in the local locations (remote ones are left to pip)."""
    wheels: dict[str, Path] = {}
    for location in locations:
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme not in ("", "file"):
            continue
        root = Path(urllib.parse.unquote(parsed.path))
        if not root.is_dir():
            continue
        if (root / "index.html").is_file() or any(root.glob("*/index.html")):
            # A PEP 503 "simple" tree: each project page links to the files by relative path.
            for page in root.glob("*/index.html"):
                for href in HREF.findall(page.read_text(errors="replace")):
                    path = (page.parent / urllib.parse.unquote(href)).resolve()
                    if path.suffix == ".whl" and path.is_file():
                        wheels.setdefault(path.name, path)
        else:
            for path in root.glob("*.whl"):
                wheels.setdefault(path.name, path)
    return wheels


def handler_for(wheels: dict[str, Path]) -> type[http.server.BaseHTTPRequestHandler]:
    page = "".join(f'<a href="{html.escape(name)}">{html.escape(name)}</a>\n' for name in sorted(wheels))
    body = f"<!DOCTYPE html><html><body>\n{page}</body></html>\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            name = urllib.parse.unquote(self.path.split("?", 1)[0].lstrip("/"))
            if name in ("", "index.html"):
                self._send(200, "text/html", body)
            elif name in wheels:
                self._send_file(wheels[name])
            else:
                self._send(404, "text/plain", b"not a local wheel\n")

        def _send(self, status: int, kind: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_file(self, path: Path) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    self.wfile.write(chunk)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
            pass  # one line per multi-GB wheel is noise in a build log

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the local pip wheels to image builds on loopback.")
    parser.add_argument("--port", type=int, default=3141, help="loopback port (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the wheels it would serve, then exit")
    args = parser.parse_args(argv)
    wheels = local_wheels(pip_locations())
    if args.list:
        print("\n".join(f"{name}\t{path}" for name, path in sorted(wheels.items())))
        return 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(wheels))
    print(f"wheelhouse: {len(wheels)} local wheels on http://127.0.0.1:{args.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
