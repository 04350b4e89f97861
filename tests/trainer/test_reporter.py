"""Job reporting: a crashing run marks its job failed on the shared service, without masking its own error."""

from __future__ import annotations

import json

import httpx

from services.client import RetrievalClient, ServiceUnavailableError
from trainer.jobs import Reporter


def recording_client(status: int = 200) -> tuple[RetrievalClient, list[dict]]:
    posted: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append({"path": request.url.path, **json.loads(request.content)})
        if status != 200:
            return httpx.Response(status, json={"error": {"code": "x", "message": "refused"}})
        job = {"job_id": "j1", "name": "n", "status": "failed", "created": "t", "updated": "t"}
        return httpx.Response(200, json=job)

    client = RetrievalClient("http://svc", transport=httpx.MockTransport(handler), sleep=lambda _: None)
    return client, posted


def test_failed_run_posts_a_failed_status_event_naming_the_error():
    client, posted = recording_client()
    Reporter(client, "j1").failed(RuntimeError("CUDA out of memory"))
    assert posted == [
        {
            "path": "/v1/jobs/j1/events",
            "type": "status",
            "status": "failed",
            "message": "RuntimeError: CUDA out of memory",
            "metrics": {},
        }
    ]


def test_failed_reporting_never_raises_and_skips_a_gone_service():
    client, posted = recording_client(status=404)
    Reporter(client, "j1").failed(ValueError("bad"))  # the service refuses: swallowed
    assert len(posted) == 1
    Reporter(client, "j1").failed(ServiceUnavailableError(503, "service_unavailable", "gone"))
    assert len(posted) == 1  # no retries against a service that is already known to be gone
