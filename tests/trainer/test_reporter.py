"""Job reporting: a crashing run marks its job failed on the shared service, without masking its own error."""

from __future__ import annotations

import json
import os

import httpx

from services.client import RetrievalClient, ServiceUnavailableError
from services.schemas import JobCreate, JobEvent
from tests.conftest import free_port
from tests.retrieval.live_server import live_server
from trainer.remote.jobs import OUTBOX, Reporter


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


def test_round_event_kept_through_an_outage_and_resent_at_next_contact(index_dir, redis_url, tmp_path):
    """A real service (jobs in Redis) goes down between rounds: the round event waits in the outbox and the
    next contact (here a resumed process's first event) delivers it, so the job shows every round."""
    port = free_port()
    url, env = f"http://127.0.0.1:{port}", {"SJFT_REDIS_PREFIX": f"sjft-outbox-{os.getpid()}"}
    with live_server(index_dir, tmp_path / "a.log", redis_url=redis_url, env=env, port=port):
        client = RetrievalClient(url, retries=0)
        job_id = client.create_job(JobCreate(name="outbox", target="t", config={})).job_id
        assert Reporter(client, job_id, tmp_path).event(JobEvent(type="round", round=0), keep=True)
    down = Reporter(client, job_id, tmp_path)
    assert not down.event(JobEvent(type="round", round=1), keep=True)  # kept, not raised
    assert len((tmp_path / OUTBOX).read_text().splitlines()) == 1
    with live_server(index_dir, tmp_path / "b.log", redis_url=redis_url, env=env, port=port):
        with RetrievalClient(url) as back:
            resumed = Reporter(back, job_id, tmp_path)  # reads the outbox file
            assert resumed.event(JobEvent(type="round", round=2), keep=True)
            assert back.get_job(job_id).rounds == 3
    assert not (tmp_path / OUTBOX).read_text().strip()
    client.close()
