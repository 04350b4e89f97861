"""`pip install '.[client]'` is enough for the client: it imports nothing heavy, and the README's notebook
example runs in an interpreter that can import ONLY the client's dependency closure (numpy, pydantic, httpx
and what they require), against a real server.

A fresh venv with `pip install` needs the network; instead the test links the installed distributions of that
closure (and this repo's ``services`` package) into an empty directory and runs ``python -I -S`` on it: no
site-packages, so torch, FAISS or PIL cannot be imported even by accident.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "faiss", "PIL", "scipy", "fastapi", "starlette", "redis", "matplotlib")


def base_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r).name for r in project["dependencies"]]


def test_base_install_is_the_client():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(base_dependencies()) == {"numpy", "pydantic", "httpx"}
    assert project["optional-dependencies"]["client"] == []


def _closure(roots: list[str]) -> set[str]:
    """Names of the installed distributions ``roots`` need (extras and non-matching markers left out)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.distribution(name).requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _top_level(dist: metadata.Distribution) -> set[str]:
    names = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".egg-info", ".pth")) or first in ("..", "__pycache__", "bin"):
            continue
        names.add(first)
    return names


@pytest.fixture(scope="module")
def client_path(tmp_path_factory) -> Path:
    """A directory holding only the client's dependency closure and ``services`` (links)."""
    path = tmp_path_factory.mktemp("client-only")
    for name in _closure(base_dependencies()):
        dist = metadata.distribution(name)
        site = Path(dist.locate_file(""))
        for top in _top_level(dist):
            if (site / top).exists() and not (path / top).exists():
                (path / top).symlink_to(site / top)
    (path / "services").symlink_to(ROOT / "services")
    return path


def run_isolated(path: Path, code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in ``python -I -S`` whose only import path besides the stdlib is ``path``."""
    prelude = f"import sys; sys.path.insert(0, {str(path)!r})\n"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True, text=True, timeout=timeout
    )


def test_client_imports_nothing_heavy(client_path):
    code = (
        "import importlib.util, sys\n"
        "import services.client, services.schemas\n"
        f"heavy = {HEAVY!r}\n"
        "print('loaded', sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "print('importable', sorted(m for m in heavy if importlib.util.find_spec(m)))\n"
    )
    proc = run_isolated(client_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "loaded []" in proc.stdout and "importable []" in proc.stdout, proc.stdout


def readme_client_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A client without torch", 1)[1]
    return re.search(r"^```python\n(.*?)^```", section, flags=re.S | re.M).group(1)


def test_readme_client_example_runs_with_only_the_client(client_path, tmp_path_factory, tmp_path):
    from tests.retrieval.live_server import build_test_index, live_server, shared_index_root

    index_dir = build_test_index(shared_index_root(tmp_path_factory))
    image = sorted((index_dir.parent / "images").rglob("*.png"))[0]
    example = readme_client_example()
    for placeholder in ("my_photo.jpg", "http://127.0.0.1:8000", '"change-me"'):
        assert placeholder in example, f"the README example should use {placeholder}"
    with live_server(index_dir, tmp_path / "server.log", env={"SJFT_API_TOKENS": "nb-token"}) as base:
        code = (
            f"import os; os.chdir({str(tmp_path)!r})\n"
            + example.replace("my_photo.jpg", str(image))
            .replace("http://127.0.0.1:8000", base)
            .replace('"change-me"', '"nb-token"')
        )
        proc = run_isolated(client_path, code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    # The query image is itself a source of the index: its first neighbor is at distance 0.
    assert len(lines) == 5 and lines[0].split()[1] == "0.0000", proc.stdout
    thumbs = list(tmp_path.glob("source-*.jpg"))
    assert len(thumbs) == 1 and thumbs[0].read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
