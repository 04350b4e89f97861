"""RetrievalClient: retry policy, error mapping, batching and tar streaming (httpx transports in-process)."""

from __future__ import annotations

import io
import json
import tarfile

import httpx
import pytest

from services.client import ClientError, RetrievalClient, ServiceUnavailableError
from services.schemas import Query

NEIGHBOR = {"source_id": 1, "distance": 0.5, "label": 0, "class_name": "a"}


def client_for(handler, **kw) -> tuple[RetrievalClient, list[float]]:
    slept: list[float] = []
    kw.setdefault("backoff", 0.1)
    client = RetrievalClient("http://svc", transport=httpx.MockTransport(handler), sleep=slept.append, **kw)
    return client, slept


def neighbors_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    results = [{"id": q["id"], "neighbors": [NEIGHBOR]} for q in body["queries"]]
    return httpx.Response(200, json={"results": results, "spec_hash": "h", "took_ms": 1.0})


def test_retries_503_then_succeeds_with_exponential_backoff():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        return (
            httpx.Response(503, json={"error": {"code": "not_ready", "message": "x"}})
            if len(calls) < 3
            else (httpx.Response(200, json={"status": "ok"}))
        )

    client, slept = client_for(handler)
    assert client.health() == {"status": "ok"}
    assert len(calls) == 3 and slept == [0.1, 0.2]


def test_429_honours_retry_after():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(
                429, headers={"Retry-After": "2"}, json={"error": {"code": "r", "message": "m"}}
            )
        return httpx.Response(200, json={"status": "ok"})

    client, slept = client_for(handler)
    client.health()
    assert slept == [2.0]


def test_connection_errors_exhaust_into_unavailable_with_resume_hint():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    client, slept = client_for(handler, retries=3, max_backoff=0.3)
    with pytest.raises(ServiceUnavailableError) as info:
        client.health()
    assert slept == [0.1, 0.2, 0.3]  # capped by max_backoff
    assert "--resume" in str(info.value) and info.value.status == 503


def test_other_errors_are_not_retried_and_keep_the_service_error_body():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(
            422, json={"error": {"code": "invalid_k", "message": "k too big", "details": [1]}}
        )

    client, slept = client_for(handler)
    with pytest.raises(ClientError) as info:
        client.index_info()
    assert len(calls) == 1 and not slept
    assert (info.value.status, info.value.code, info.value.details) == (422, "invalid_k", [1])
    assert not isinstance(info.value, ServiceUnavailableError)


def test_neighbors_batches_large_query_lists_in_order():
    sizes = []

    def handler(request):
        sizes.append(len(json.loads(request.content)["queries"]))
        return neighbors_answer(request)

    client, _ = client_for(handler, batch_size=4)
    queries = [Query(id=f"q{i}", source_id=i) for i in range(10)]
    response = client.neighbors(queries, k=3, offset=2)
    assert sizes == [4, 4, 2]
    assert [r.id for r in response.results] == [f"q{i}" for i in range(10)]
    assert response.took_ms == 3.0


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_stream_sources_parses_members_incrementally():
    payload = tar_of([("7.png", b"seven"), ("3.jpg", b"three" * 1000)])

    def handler(request):
        assert json.loads(request.content) == {"ids": [7, 3]}
        chunks = [payload[i : i + 100] for i in range(0, len(payload), 100)]  # arrives in small pieces
        return httpx.Response(200, stream=httpx.ByteStream(b"".join(chunks)))

    client, _ = client_for(handler)
    assert list(client.stream_sources([7, 3])) == [(7, "png", b"seven"), (3, "jpg", b"three" * 1000)]


def test_bearer_token_is_sent():
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"jobs": []})

    client, _ = client_for(handler, token="s3cret")
    assert client.list_jobs() == []
    assert seen == ["Bearer s3cret"]
