"""Every bad input gets a 4xx JSON error naming the problem, and the REAL server stays healthy afterwards."""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import uuid
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.retrieval.live_server import live_server

MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def client(index_dir, redis_url, tmp_path_factory):
    env = {
        "SJFT_REDIS_PREFIX": f"sjft-test-{uuid.uuid4().hex[:12]}",
        "SJFT_MAX_QUERIES_PER_REQUEST": "16",
        "SJFT_MAX_K_PLUS_OFFSET": "20",
        "SJFT_MAX_BODY_BYTES": str(MAX_BODY),
        "SJFT_MAX_IMAGE_PIXELS": "4000000",
    }
    log = tmp_path_factory.mktemp("svc-err-log") / "server.log"
    with (
        live_server(index_dir, log, redis_url=redis_url, env=env) as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def good(client) -> dict:
    """A valid descriptor of this index, and its spec hash."""
    desc = client.get("/v1/sources/2/descriptor").json()
    return {"descriptor": desc["descriptor"], "spec_hash": desc["spec_hash"]}


def png_bytes(size=(40, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 20_000) -> bytes:
    """A valid blank 1-bit PNG of side x side pixels, written directly (PIL would allocate 50 MB): ~60 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def q(**fields) -> dict:
    return {"queries": [{"id": "x", **fields}]}


def descriptor_with(good, fn) -> dict:
    arr = np.asarray(good["descriptor"], dtype=np.float64)
    return q(descriptor=fn(arr.copy()), spec_hash=good["spec_hash"])


def _set(arr, index, value):
    arr[index] = value
    return arr.tolist()


# (case, body builder (good -> JSON-able dict or raw bytes), expected status, words the message must name)
CASES = [
    ("malformed_json", lambda g: b'{"queries": [', 400, ["JSON"]),
    ("not_an_object", lambda g: b"[1, 2]", 422, ["body"]),
    ("wrong_type_k", lambda g: {**q(source_id=1), "k": "ten"}, 422, ["k"]),
    ("wrong_type_queries", lambda g: {"queries": "all"}, 422, ["queries"]),
    ("missing_queries", lambda g: {"k": 3}, 422, ["queries"]),
    ("missing_query_id", lambda g: {"queries": [{"source_id": 1}]}, 422, ["id"]),
    ("query_without_kind", lambda g: q(), 422, ["exactly one"]),
    ("k_zero", lambda g: {**q(source_id=1), "k": 0}, 422, ["k"]),
    ("k_negative_per_query", lambda g: q(source_id=1, k=-1), 422, ["k"]),
    ("k_over_limit", lambda g: {**q(source_id=1), "k": 15, "offset": 6}, 422, ["k + offset", "20"]),
    ("k_over_schema_max", lambda g: {**q(source_id=1), "k": 10**6}, 422, ["k"]),
    ("negative_offset", lambda g: {**q(source_id=1), "offset": -1}, 422, ["offset"]),
    ("unknown_metric", lambda g: {**q(source_id=1), "metric": "cosine"}, 422, ["metric"]),
    ("empty_queries", lambda g: {"queries": []}, 422, ["queries"]),
    (
        "too_many_queries",
        lambda g: {"queries": [{"id": str(i), "source_id": 0} for i in range(17)]},
        413,
        ["16"],
    ),
    ("duplicate_ids", lambda g: {"queries": [{"id": "a", "source_id": 0}] * 2}, 422, ["unique"]),
    ("invalid_base64", lambda g: q(image_b64="not base64!!"), 422, ["base64"]),
    ("not_an_image", lambda g: q(image_b64=b64(b"hello, I am text" * 10)), 422, ["image"]),
    ("truncated_jpeg", lambda g: q(image_b64=b64(jpeg_bytes()[:600])), 422, ["'x'"]),
    ("pixel_bomb_png", lambda g: q(image_b64=b64(bomb_png())), 413, ["pixels"]),
    (
        "descriptor_wrong_shape",
        lambda g: q(descriptor=[[0.5, 0.5]], spec_hash=g["spec_hash"]),
        422,
        ["shape"],
    ),
    (
        "descriptor_ragged",
        lambda g: q(descriptor=[[1.0], [0.5, 0.5]], spec_hash=g["spec_hash"]),
        422,
        ["rows"],
    ),
    ("descriptor_nan", lambda g: descriptor_with(g, lambda a: _set(a, (0, 0), float("nan"))), 422, ["NaN"]),
    ("descriptor_inf", lambda g: descriptor_with(g, lambda a: _set(a, (1, 1), float("inf"))), 422, ["inf"]),
    ("descriptor_negative", lambda g: descriptor_with(g, lambda a: _set(a, (2, 0), -0.1)), 422, ["negative"]),
    ("descriptor_not_normalised", lambda g: descriptor_with(g, lambda a: (a * 2).tolist()), 422, ["sum"]),
    ("descriptor_without_hash", lambda g: q(descriptor=g["descriptor"]), 422, ["spec_hash"]),
    ("spec_of_other_index", lambda g: q(descriptor=g["descriptor"], spec_hash="ab" * 32), 422, ["spec"]),
    ("unknown_source_id", lambda g: q(source_id=4096), 404, ["4096"]),
    ("negative_source_id", lambda g: q(source_id=-3), 422, ["source_id"]),
    ("negative_exclusion", lambda g: {**q(source_id=1), "exclude_source_ids": [-1]}, 422, ["exclude"]),
    ("unknown_field", lambda g: {**q(source_id=1), "kk": 3}, 422, ["kk"]),
]


@pytest.mark.parametrize("name,build,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_neighbors_request(client, good, name, build, status, words):
    body = build(good)
    if isinstance(body, bytes):
        r = client.post("/v1/neighbors", content=body, headers={"content-type": "application/json"})
    else:
        # allow_nan: NaN/Infinity literals as a careless client would send them.
        r = client.post(
            "/v1/neighbors",
            content=json.dumps(body, allow_nan=True),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and error["code"] and isinstance(error["message"], str)
    for word in words:
        assert word.lower() in (error["message"] + json.dumps(error["details"])).lower(), (word, error)
    assert client.get("/healthz").status_code == 200


def test_pixel_bomb_code_and_upload_route(client):
    r = client.post("/v1/neighbors", json=q(image_b64=b64(bomb_png())))
    assert r.json()["error"]["code"] == "image_too_large"
    up = client.post("/v1/neighbors/upload", files=[("files", ("bomb.png", bomb_png()))])
    assert up.status_code == 413 and "bomb.png" in up.json()["error"]["message"]
    text = client.post("/v1/neighbors/upload", files=[("files", ("notes.txt", b"plain text"))])
    assert text.status_code == 422 and "notes.txt" in text.json()["error"]["message"]
    bad_k = client.post("/v1/neighbors/upload", files=[("files", ("a.png", png_bytes()))], data={"k": "0"})
    assert bad_k.status_code == 422
    no_files = client.post("/v1/neighbors/upload", data={"k": "3"})
    assert no_files.status_code == 422 and "files" in no_files.text


def test_body_too_large_declared_and_chunked(client):
    big = b'{"queries": [{"id": "x", "image_b64": "' + b"A" * (MAX_BODY + 10) + b'"}]}'
    r = client.post("/v1/neighbors", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the cap must hold while reading
        yield big[: MAX_BODY // 2]
        yield big[MAX_BODY // 2 :]

    r = client.post("/v1/neighbors", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "path,statuses",
    [
        ("/v1/sources/4096", (404,)),
        ("/v1/sources/-1", (422,)),
        ("/v1/sources/abc", (422,)),
        ("/v1/sources/..%2F..%2Fetc%2Fpasswd", (404, 422)),
        ("/v1/sources/%2e%2e%2f%2e%2e%2fetc%2fpasswd/descriptor", (404, 422)),
        ("/v1/sources/99999999999999999999999", (404, 422)),
        ("/v1/sources/4096/descriptor", (404,)),
        ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", (404, 422)),
        ("/v1/nothing-here", (404,)),
    ],
)
def test_bad_paths_are_json_4xx(client, path, statuses):
    r = client.get(path)
    assert r.status_code in statuses, (path, r.status_code, r.text)
    assert r.json()["error"]["code"] and "Traceback" not in r.text
    assert client.get("/healthz").status_code == 200


def test_bad_stream_and_job_requests(client):
    for body, status in (
        ({"ids": []}, 422),
        ({"ids": [-1]}, 422),
        ({"ids": ["x"]}, 422),
        ({"ids": [9999]}, 404),
        ({}, 422),
    ):
        r = client.post("/v1/sources/stream", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    for body in ({}, {"name": ""}, {"name": "x", "extra": 1}):
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_service_still_answers_after_all_that(client):
    r = client.post("/v1/neighbors", json={"queries": [{"id": "ok", "source_id": 0}], "k": 3})
    assert r.status_code == 200 and len(r.json()["results"][0]["neighbors"]) == 3
    assert client.get("/readyz").json()["status"] == "ok"
    assert 'status="500"' not in client.get("/metrics").text  # no bad input above became a server error
