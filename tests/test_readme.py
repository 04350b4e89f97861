"""The README's HTTP examples work: every ```bash block with curl runs, in order, against a live service (auth
on, real Redis), every route of the API has an example, and the configuration table lists every setting."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.test_deploy import settings_env_names

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOKEN = "readme-example-token"
NOT_DOCUMENTED = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # FastAPI's own pages


def bash_blocks(text: str) -> list[str]:
    """Fenced ```bash blocks that call curl, in README order."""
    return [b for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M) if "curl " in b]


def curl_calls(block: str) -> list[tuple[str, str]]:
    """(method, url path) of every curl invocation in a block (continuations joined, pipes split)."""
    calls = []
    for command in re.sub(r"\\\n\s*", " ", block).split("\n"):
        for segment in command.split("|"):
            if "curl " not in segment:
                continue
            path = re.search(r'"\$BASE(/[^"?]*)', segment)
            assert path, f"curl without a $BASE URL: {segment.strip()}"
            post = re.search(r"-X POST|(^|\s)-d\s|(^|\s)-F\s", segment)
            calls.append(("POST" if post else "GET", path.group(1)))
    return calls


@pytest.fixture(scope="module")
def readme_service(tmp_path_factory, texture_tree, redis_url):
    """A live service on an index of the test textures: bearer tokens on, Redis on."""
    from retrieval_service.build.builder import build_index
    from tests.retrieval.live_server import live_server

    workdir = tmp_path_factory.mktemp("readme")
    index_dir = workdir / "index"
    build_index(texture_tree, index_dir, size=48, bins=8, workers=0, device="cpu", progress=False)
    env = {
        "SJFT_API_TOKENS": TOKEN,
        "SJFT_REDIS_PREFIX": f"sjft-test-readme-{os.getpid()}",
        "SJFT_LOG_LEVEL": "warning",
    }
    with live_server(index_dir, workdir / "server.log", redis_url=redis_url, env=env) as base:
        yield base


def test_readme_has_curl_examples_that_fail_on_http_errors():
    blocks = bash_blocks(README.read_text())
    assert len(blocks) >= 6
    for block in blocks:
        for command in re.sub(r"\\\n\s*", " ", block).split("\n"):
            for segment in command.split("|"):
                if "curl " in segment:  # the first flag carries -f: exit 22 on any 4xx/5xx answer
                    assert re.search(r"curl -[a-zA-Z]*f[a-zA-Z]*\s", segment), (
                        f"curl without -f cannot fail on a 4xx/5xx: {segment.strip()}"
                    )


def test_every_route_has_a_curl_example(readme_service):
    documented = [call for block in bash_blocks(README.read_text()) for call in curl_calls(block)]
    spec = httpx.get(f"{readme_service}/openapi.json", timeout=10).json()
    missing = []
    for path, methods in spec["paths"].items():
        if path in NOT_DOCUMENTED:
            continue
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(path)) + "$")
        for method in methods:
            if not any(m == method.upper() and pattern.match(p) for m, p in documented):
                missing.append(f"{method.upper()} {path}")
    assert not missing, f"routes without a README example: {missing}"


def test_readme_curl_examples_run_against_a_live_service(readme_service, texture_tree, tmp_path):
    blocks = bash_blocks(README.read_text())
    image = sorted(texture_tree.rglob("*.png"))[0]
    script = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        script += [f"echo '@@ block {i}' >&2", block]
    env = {**os.environ, "BASE": readme_service, "TOKEN": TOKEN, "IMG": str(image)}
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    failed = re.findall(r"@@ block (\d+)", proc.stderr)
    assert proc.returncode == 0, (
        f"README block {failed[-1] if failed else '?'} failed (exit {proc.returncode}):\n"
        f"{blocks[int(failed[-1])] if failed else ''}\nstderr: {proc.stderr[-2000:]}"
    )
    assert len(failed) == len(blocks)
    out = proc.stdout
    assert '"neighbors"' in out and '"job_id"' in out and '"spec_hash"' in out
    assert " HTTP 304\n" in out, "the If-None-Match example should answer 304"
    assert (tmp_path / "sources.tar").stat().st_size > 0 and (tmp_path / "source-0").stat().st_size > 0


def test_readme_documents_every_setting():
    text = README.read_text()
    names = sorted(settings_env_names())
    assert "SJFT_INDEX_DIR" in names and "REDIS_URL" in names
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
