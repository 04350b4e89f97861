"""Training jobs register, report rounds and status, and are listed, so a shared service shows who uses it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from retrieval_service.api.deps import StateDep
from retrieval_service.api.errors import NotFound
from services.schemas import ErrorBody, Job, JobCreate, JobEvent, JobList, text_int

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Server-assigned job id.")]
_NOT_FOUND = {404: {"model": ErrorBody, "description": "no such job"}}


@router.post("", response_model=Job, status_code=201)
def create_job(body: JobCreate, state: StateDep) -> Job:
    """Register a training job; its id is returned."""
    return state.jobs.create(body)


@router.get("", response_model=JobList)
def list_jobs(state: StateDep, limit: Annotated[text_int(ge=1, le=1000), Query()] = 200) -> JobList:
    """Registered jobs, most recent first."""
    return JobList(jobs=state.jobs.list(limit))


@router.get("/{job_id}", response_model=Job, responses=_NOT_FOUND)
def get_job(job_id: JobId, state: StateDep) -> Job:
    """One job with its events."""
    job = state.jobs.get(job_id)
    if job is None:
        raise NotFound(f"unknown job_id {job_id}", {"job_id": job_id})
    return job


@router.post("/{job_id}/events", response_model=Job, responses=_NOT_FOUND)
def add_job_event(job_id: JobId, event: JobEvent, state: StateDep) -> Job:
    """Report a round's metrics, a status change or a log line."""
    job = state.jobs.add_event(job_id, event)
    if job is None:
        raise NotFound(f"unknown job_id {job_id}", {"job_id": job_id})
    return job
