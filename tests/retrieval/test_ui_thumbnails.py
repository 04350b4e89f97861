"""Thumbnails (``GET /v1/sources/{id}?size=N``) and the page's files, against a REAL server with auth on."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from retrieval_service.api.thumbnails import (
    ThumbnailCache,
    if_none_match_hits,
    make_thumbnail,
    thumbnail_etag,
    thumbnail_response,
)
from retrieval_service.index.manifest import Manifest
from services.errors import ImageDecodeError
from tests.retrieval.live_server import live_server

TOKEN = "ui-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def base_url(index_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui-thumbs") / "server.log"
    with live_server(index_dir, log, env={"SJFT_API_TOKENS": TOKEN}) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


def test_thumbnail_is_a_jpeg_no_larger_than_size(client, index_dir):
    original = client.get("/v1/sources/3")
    width, height = Image.open(io.BytesIO(original.content)).size
    for size in (16, 20, 1024):
        r = client.get("/v1/sources/3", params={"size": size})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
        thumb = Image.open(io.BytesIO(r.content))
        assert thumb.format == "JPEG" and thumb.mode == "RGB"
        # The longer side is min(size, the original's): a thumbnail is never upscaled.
        assert max(thumb.size) == min(size, max(width, height)), (size, thumb.size)
    manifest = Manifest.open(index_dir / "manifest.sqlite")
    try:
        sha = manifest.get(3).sha256
    finally:
        manifest.close()
    assert original.headers["etag"] == f'"{sha}"' and original.headers["content-type"] == "image/png"


def test_thumbnail_etag_names_source_and_size_and_revalidates(client):
    a16 = client.get("/v1/sources/5?size=16")
    a32 = client.get("/v1/sources/5?size=32")
    b16 = client.get("/v1/sources/6?size=16")
    etags = {a16.headers["etag"], a32.headers["etag"], b16.headers["etag"]}
    assert len(etags) == 3 and "max-age" in a16.headers["cache-control"]
    again = client.get("/v1/sources/5?size=16", headers={"If-None-Match": a16.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == a16.headers["etag"]
    other_size = client.get("/v1/sources/5?size=32", headers={"If-None-Match": a16.headers["etag"]})
    assert other_size.status_code == 200 and other_size.content == a32.content


@pytest.mark.parametrize("size", ["0", "15", "1025", "-3", "big"])
def test_thumbnail_size_out_of_bounds_is_a_422_naming_size(client, size):
    r = client.get(f"/v1/sources/2?size={size}")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and "size" in error["message"]


def test_thumbnail_of_unknown_source_is_404_and_needs_the_token(client, base_url):
    r = client.get("/v1/sources/100000?size=64")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    anonymous = httpx.get(f"{base_url}/v1/sources/1?size=64")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"


def test_page_and_assets_are_open_and_locked_down(base_url):
    page = httpx.get(f"{base_url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    assert 'src="ui/ui.js"' in page.text and 'href="ui/ui.css"' in page.text
    for asset, kind in (("ui.js", "text/javascript"), ("ui.css", "text/css")):
        r = httpx.get(f"{base_url}/ui/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 500
    assert httpx.get(f"{base_url}/ui/secrets.py").status_code == 404
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert "/ui" in schema["paths"] and "size" in str(schema["paths"]["/v1/sources/{source_id}"])


def test_page_script_never_puts_the_token_in_a_url():
    script = (Path(__file__).resolve().parents[2] / "retrieval_service/api/static/ui.js").read_text()
    assert "sessionStorage" in script and "Authorization" in script and "innerHTML" not in script
    assert "token=" not in script and "localStorage" not in script


def test_make_thumbnail_handles_alpha_orientation_and_refuses_bombs():
    rgba = Image.new("RGBA", (300, 100), (255, 0, 0, 0))  # fully transparent red: white once composited
    out = io.BytesIO()
    rgba.save(out, "PNG")
    thumb = Image.open(io.BytesIO(make_thumbnail(out.getvalue(), 60, 10**6)))
    assert thumb.size == (60, 20) and min(thumb.getpixel((30, 10))) > 240
    portrait = Image.new("RGB", (40, 80))
    exif = portrait.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display: viewers show 80 x 40
    out = io.BytesIO()
    portrait.save(out, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(make_thumbnail(out.getvalue(), 40, 10**6))).size == (40, 20)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        make_thumbnail(out.getvalue(), 40, 1000)
    with pytest.raises(ImageDecodeError):
        make_thumbnail(b"not an image", 40, 10**6)


def test_thumbnail_cache_evicts_least_recently_used_within_its_byte_budget():
    cache = ThumbnailCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.bytes == 8
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None and len(cache) == 2


def test_if_none_match_parsing():
    assert if_none_match_hits('"x", W/"y"', '"y"') and if_none_match_hits("*", '"z"')
    assert not if_none_match_hits(None, '"y"') and not if_none_match_hits('"yy"', '"y"')


def test_thumbnail_response_without_a_manifest_hash_names_the_bytes():
    out = io.BytesIO()
    Image.new("RGB", (50, 30), (10, 200, 30)).save(out, "PNG")
    data, reads = out.getvalue(), []

    def read() -> bytes:
        reads.append(1)
        return data

    cache = ThumbnailCache()
    first = thumbnail_response(None, read, 20, None, cache, 10**6)
    etag = first.headers["etag"]
    assert etag == thumbnail_etag(hashlib.sha256(data).hexdigest(), 20) and first.media_type == "image/jpeg"
    assert thumbnail_response(None, read, 20, etag, cache, 10**6).status_code == 304
    # Even with a manifest hash and a cached thumbnail, the source is read (and so verified) for every
    # answer: a file changed at the same size must not keep its thumbnail (issue 17, item 5).
    thumbnail_response("ab" * 32, read, 20, None, cache, 10**6)
    reads.clear()
    again = thumbnail_response("ab" * 32, read, 20, None, cache, 10**6)
    assert again.status_code == 200 and reads == [1]
