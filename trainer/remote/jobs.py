"""Job registration and events on the shared service, with an outbox so no round event is lost.

Registration (``register_job``) happens once, before round 0; a service that refuses it costs a warning.

A round event goes to ``<out>/outbox.jsonl`` first and is sent from there; an event the service could not
take (down, restarting) stays in the outbox and is re-sent, in order, at the next successful contact (the
next event, or the resumed run's first), so a finished 3-round run always shows ``rounds: 3``. A service
that answers but refuses job routes only costs a warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from services.client import ClientError, RetrievalClient, ServiceUnavailableError
from services.fileio import atomic_write
from services.schemas import JobCreate, JobEvent
from trainer.config import RunConfig

OUTBOX = "outbox.jsonl"
SHOWN_SOURCES = 48  # source ids a round event carries: the Jobs tab of the web page shows up to 48


def round_event(rnd: int, metrics: dict, source_ids: Sequence[int]) -> JobEvent:
    """Round ``rnd``'s event: its metrics row plus ``source_ids``, the first ``SHOWN_SOURCES`` distinct
    sources it trained on (the Jobs tab's thumbnails; left out of metrics.jsonl, which stays compact, and
    left out when the round trained on no sources)."""
    shown = list(dict.fromkeys(int(s) for s in source_ids))[:SHOWN_SOURCES]
    return JobEvent(type="round", round=rnd, metrics={**metrics, "source_ids": shown} if shown else metrics)


class Reporter:
    """Events of one job; ``outbox_dir`` None keeps the outbox in memory only (tests, rank != 0)."""

    def __init__(self, client: RetrievalClient | None, job_id: str | None, outbox_dir: Path | None = None):
        self.client, self.job_id = client, job_id
        self.path = outbox_dir / OUTBOX if outbox_dir is not None else None
        self.pending: list[dict] = self._load()

    def _load(self) -> list[dict]:
        if self.path is None or not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _save(self) -> None:
        if self.path is not None:
            atomic_write(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.pending))

    def event(self, event: JobEvent, keep: bool = False) -> bool:
        """Send ``event`` after any pending ones; True when all were delivered. ``keep``: queue it in the
        outbox when the service is unavailable (round events) instead of raising."""
        if self.client is None or self.job_id is None:
            return True
        body = event.model_dump(mode="json", exclude_none=True)
        if keep:
            # A round redone after a kill replaces its queued event: the service counts round events.
            self.pending = [
                e for e in self.pending if (e.get("type"), e.get("round")) != ("round", event.round)
            ]
            self.pending.append(body)
            self._save()
            return self.flush()
        if not self.flush():
            return False
        self._send(body)
        return True

    def flush(self) -> bool:
        """Send the outbox in order; False (events kept) when the service is unavailable."""
        while self.pending:
            try:
                self._send(self.pending[0])
            except ServiceUnavailableError as exc:
                print(
                    f"warning: job event kept for later, the service is unavailable: {exc}", file=sys.stderr
                )
                return False
            self.pending.pop(0)
            self._save()
        return True

    def _send(self, body: dict) -> None:
        try:
            self.client.job_event(self.job_id, JobEvent.model_validate(body))
        except ServiceUnavailableError:
            raise
        except ClientError as exc:
            print(f"warning: job event not recorded: {exc}", file=sys.stderr)

    def failed(self, exc: BaseException) -> None:
        """Best effort: mark the job failed; no error of this call may mask the run's own."""
        if isinstance(exc, ServiceUnavailableError):
            return  # the service is gone: retrying here would only delay the resume hint
        message = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            self.event(JobEvent(type="status", status="failed", message=message))
        except (ClientError, ServiceUnavailableError):
            pass


def register_job(cfg: RunConfig, client: RetrievalClient) -> str | None:
    """The job id on the service, or None when the service refuses job routes (a warning)."""
    try:
        name = cfg.job_name or f"sjft:{Path(cfg.out).name}"
        return client.create_job(JobCreate(name=name, target=cfg.target, config=cfg.to_dict())).job_id
    except ServiceUnavailableError:
        if cfg.source_mode != "none":
            raise
        print("warning: job not registered: the service is unavailable", file=sys.stderr)
    except ClientError as exc:
        print(f"warning: job not registered: {exc}", file=sys.stderr)
    return None
