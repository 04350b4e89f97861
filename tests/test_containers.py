"""The helpers the images and the compose smoke test run: docker/requirements.py (the dependency layer)
and scripts/containers/wheelhouse.py (local wheels served to image builds), on real files and server."""

from __future__ import annotations

import importlib.util
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


requirements_py = _load("docker/requirements.py")
wheelhouse = _load("scripts/containers/wheelhouse.py")


def test_requirements_follow_self_extras_and_leave_out_what_the_image_pins():
    pyproject = {"project": {
        "name": "sjft",
        "dependencies": ["numpy>=1.26"],
        "optional-dependencies": {
            "core": ["torch==2.14.1", "torchvision==0.29.1", "pillow>=10", "numpy>=1.26"],
            "service": ["sjft[core]", "faiss-cpu>=1.8", "fastapi>=0.110"],
        },
    }}
    expected = ["numpy>=1.26", "pillow>=10", "fastapi>=0.110"]
    assert requirements_py.requirements(pyproject, ["service"]) == expected


def test_requirements_of_the_real_extras_cover_what_the_images_import():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    service = " ".join(requirements_py.requirements(pyproject, ["service"]))
    trainer = " ".join(requirements_py.requirements(pyproject, ["trainer"]))
    for name in ("fastapi", "uvicorn", "redis", "pyarrow", "pillow", "pydantic-settings"):
        assert name in service
    for name in ("timm", "pillow", "httpx"):
        assert name in trainer
    assert "torch" not in service + trainer and "faiss" not in service


def test_requirements_name_an_unknown_extra():
    with pytest.raises(SystemExit, match="no extra 'gpu'"):
        requirements_py.requirements({"project": {"name": "x", "optional-dependencies": {"a": []}}}, ["gpu"])


@pytest.fixture()
def local_index(tmp_path: Path) -> list[str]:
    """A PEP 503 tree (project pages linking ../../files/...) and a flat find-links folder, as pip is set up
    on a machine that keeps its wheels on disk."""
    files = tmp_path / "pypi" / "files"
    files.mkdir(parents=True)
    (files / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"torch wheel bytes")
    (files / "orphan-1.0-py3-none-any.whl").write_bytes(b"not linked from any page")
    page = tmp_path / "pypi" / "simple" / "torch"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        '<a href="../../files/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl#sha256=00">torch</a>')
    flat = tmp_path / "wheels"
    flat.mkdir()
    (flat / "tiny-0.1-py3-none-any.whl").write_bytes(b"x" * (3 << 20))  # more than one read chunk
    return [f"file://{tmp_path / 'pypi' / 'simple'}", str(flat), "https://example.invalid/simple",
            str(tmp_path / "missing")]


def test_wheelhouse_collects_linked_and_flat_local_wheels_only(local_index):
    wheels = wheelhouse.local_wheels(local_index)
    torch = "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert sorted(wheels) == ["tiny-0.1-py3-none-any.whl", torch]


def test_wheelhouse_serves_one_find_links_page_and_the_files(local_index):
    import http.server

    wheels = wheelhouse.local_wheels(local_index)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), wheelhouse.handler_for(wheels))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = urllib.request.urlopen(f"{base}/", timeout=10).read().decode()
        assert 'href="torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"' in page
        body = urllib.request.urlopen(f"{base}/tiny-0.1-py3-none-any.whl", timeout=10).read()
        assert body == b"x" * (3 << 20)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/../etc/passwd", timeout=10)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        thread.join(timeout=10)
