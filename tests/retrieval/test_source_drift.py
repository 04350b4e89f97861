"""The corpus changes under a built index: deleted and replaced source files, against a real server."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from retrieval_service.index.loaded import LoadedIndex
from services.client import ClientError, RetrievalClient, ServiceUnavailableError
from tests.retrieval.live_server import build_test_index, live_server


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A private index whose corpus the tests then damage; yields (url, {role: source_id}, records)."""
    root = tmp_path_factory.mktemp("drift")
    index_dir = build_test_index(root, per_class=4)
    index = LoadedIndex.load(index_dir, verify=False)
    records = {i: index.record(i) for i in range(index.size)}
    index.close()
    images = root / "images"
    gone, same_size, other_size, intact = 3, 5, 7, 9
    (images / records[gone].path).unlink()
    path = images / records[same_size].path
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes: only the hash can tell
    path.write_bytes(bytes(data))
    (images / records[other_size].path).write_bytes(b"\x89PNG not the same file any more")
    roles = {"gone": gone, "same_size": same_size, "other_size": other_size, "intact": intact}
    with live_server(index_dir, root / "server.log") as url:
        yield url, roles, records
    shutil.rmtree(images, ignore_errors=True)


def _error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


def test_deleted_source_is_404_source_missing(drifting):
    url, roles, _ = drifting
    response = httpx.get(f"{url}/v1/sources/{roles['gone']}")
    assert response.status_code == 404
    error = _error(response)
    assert error["code"] == "source_missing" and str(roles["gone"]) in error["message"]


@pytest.mark.parametrize("role", ["same_size", "other_size"])
def test_replaced_source_is_409_never_served_under_the_old_etag(drifting, role):
    url, roles, _ = drifting
    response = httpx.get(f"{url}/v1/sources/{roles[role]}")
    assert response.status_code == 409 and "etag" not in response.headers
    assert _error(response)["code"] == "source_changed"
    thumb = httpx.get(f"{url}/v1/sources/{roles[role]}", params={"size": 32})
    assert thumb.status_code == 409 and _error(thumb)["code"] == "source_changed"


def test_intact_source_still_served_with_its_manifest_etag(drifting):
    url, roles, records = drifting
    response = httpx.get(f"{url}/v1/sources/{roles['intact']}")
    assert response.status_code == 200 and response.headers["etag"] == f'"{records[roles["intact"]].sha256}"'


def test_stream_refuses_missing_and_resized_files_before_the_first_byte(drifting):
    url, roles, _ = drifting
    response = httpx.post(f"{url}/v1/sources/stream", json={"ids": [roles["intact"], roles["gone"]]})
    assert response.status_code == 404
    error = _error(response)
    assert error["code"] == "source_missing" and error["details"]["missing_source_ids"] == [roles["gone"]]
    response = httpx.post(f"{url}/v1/sources/stream", json={"ids": [roles["other_size"], roles["intact"]]})
    assert response.status_code == 409
    assert _error(response)["details"]["changed_source_ids"] == [roles["other_size"]]
    with RetrievalClient(url, retries=0) as client, pytest.raises(ClientError) as info:
        list(client.stream_sources([roles["intact"], roles["gone"]]))
    assert info.value.status == 404


def test_stream_aborts_on_a_same_size_change_and_the_client_raises(drifting):
    url, roles, _ = drifting
    ids = [roles["intact"], roles["same_size"], 0]
    with pytest.raises(httpx.HTTPError):  # the body ends without its final chunk: never a clean short tar
        with httpx.stream("POST", f"{url}/v1/sources/stream", json={"ids": ids}) as response:
            assert response.status_code == 200
            b"".join(response.iter_bytes())
    received = []
    with RetrievalClient(url, retries=0) as client, pytest.raises(ServiceUnavailableError):
        for source_id, _, _ in client.stream_sources(ids):
            received.append(source_id)
    assert roles["same_size"] not in received
    assert httpx.get(f"{url}/healthz").status_code == 200  # the service is fine afterwards


@pytest.fixture(scope="module")
def cached_then_changed(tmp_path_factory):
    """A server that has served (and cached) images and thumbnails, whose corpus then changes: one file
    deleted, one rewritten at the same size with its mtime kept (``cp -p``).

    Yields (url, roles, etags, log path).
    """
    root = tmp_path_factory.mktemp("drift-cached")
    index_dir = build_test_index(root, per_class=4)
    index = LoadedIndex.load(index_dir, verify=False)
    records = {i: index.record(i) for i in range(index.size)}
    index.close()
    images = root / "images"
    roles = {"gone": 2, "same_size": 4}
    with live_server(index_dir, root / "server.log") as url:
        etags = {}
        for role, source_id in roles.items():
            for query in ("", "?size=32"):
                r = httpx.get(f"{url}/v1/sources/{source_id}{query}")
                assert r.status_code == 200
                etags[role, query] = r.headers["etag"]
        (images / records[roles["gone"]].path).unlink()
        path = images / records[roles["same_size"]].path
        before = path.stat()
        data = bytearray(path.read_bytes())
        data[-20] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        yield url, roles, etags, root / "server.log"


@pytest.mark.parametrize("query", ["", "?size=32"])
@pytest.mark.parametrize(("role", "status"), [("gone", 404), ("same_size", 409)])
def test_cached_images_and_thumbnails_never_outlive_their_file(cached_then_changed, query, role, status):
    """Issue 17, item 5: a cached thumbnail kept its ETag after a same-size change, and If-None-Match with
    the manifest ETag answered 304 for a deleted or changed file."""
    url, roles, etags, _ = cached_then_changed
    for headers in ({}, {"If-None-Match": etags[role, query]}, {"If-None-Match": "*"}):
        response = httpx.get(f"{url}/v1/sources/{roles[role]}{query}", headers=headers)
        assert response.status_code == status, (headers, response.status_code)
        assert "etag" not in response.headers
        assert _error(response)["code"] == ("source_missing" if status == 404 else "source_changed")


def test_an_aborted_stream_is_one_warning_line_not_a_traceback(cached_then_changed):
    """Issue 17, item 9: a stream aborted because its source changed is the corpus's doing, not a bug."""
    url, roles, _, log = cached_then_changed
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("POST", f"{url}/v1/sources/stream", json={"ids": [0, roles["same_size"]]}) as response,
    ):
        assert response.status_code == 200
        b"".join(response.iter_bytes())
    assert httpx.get(f"{url}/healthz").status_code == 200
    text = log.read_text()
    assert f"aborting a tar stream at source {roles['same_size']}" in text
    assert "Traceback" not in text and "unhandled" not in text and "ERROR" not in text, text[-3000:]
