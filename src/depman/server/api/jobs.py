"""Jobs: submit (reserve an instance), read (optionally waiting for a change), start, complete.

The writing handlers are `async` and run their whole work, session included, in
one worker-thread call: a job runner's request then waits for the busy event loop
once, not three times (session opened, handler, session closed), which is most of
its latency beside a large fleet's agent traffic.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from depman.core import jobs as job_core
from depman.core import workflow_deps
from depman.core.scheduler import submit_job
from depman.core.states import TERMINAL_JOB_STATES
from depman.core.views import job_document
from depman.core.workflows import workflow_models
from depman.server.cache.wakeups import WakeupKind
from depman.server.deps import JobsAuthDep, ReadSessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.bounds import ID_PATTERN, MAX_ID_CHARS, IdPath
from depman.server.schemas.jobs import JobComplete, JobCreate, JobPublic, JobsPublic
from depman.server.state import ServerState, server_state
from depman.settings import MAX_WAIT_SECONDS
from depman.store.models import Job

router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=[JobsAuthDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 422)
}


def documents(jobs: list[Job], *, session: Session) -> list[dict[str, Any]]:
    """Job documents with deps and missing deps (two queries for the whole list)."""
    deps = job_core.deps_of_jobs([j.job_id for j in jobs], session=session)
    missing = job_core.missing_of_jobs(jobs, deps, session=session)
    return [job_document(j, deps[j.job_id], missing[j.job_id]) for j in jobs]


def answer(job: Job, *, session: Session) -> JSONResponse:
    """One job's document (one query for its deps and what its instance lacks).

    Built as the response_model describes it; returned as is, so FastAPI does not
    validate and serialize it a second time. Writers build it before they commit:
    a read after the commit would open a transaction that ends in a ROLLBACK, which
    makes psycopg drop the connection's prepared statements (`Database.read_session`).
    """
    dep_ids, missing = job_core.deps_and_missing(job, session=session)
    return JSONResponse(job_document(job, dep_ids, missing))


@router.post("", response_model=JobPublic, responses=ERRORS)
async def create_job(body: JobCreate, state: StateDep) -> JSONResponse:
    """Reserve the best live instance and queue the deps it lacks; else wait as pending."""
    return await run_in_threadpool(_create_job, state, body)


def _create_job(state: ServerState, body: JobCreate) -> JSONResponse:
    dep_ids = list(body.dep_ids)
    if body.workflow is not None:
        # Parsed and matched before the write session: a big workflow never holds the writer.
        refs = workflow_models(body.workflow)
        with state.db.read_session() as session:
            found = workflow_deps.workflow_dep_ids(refs, session=session)
        dep_ids = list(dict.fromkeys([*dep_ids, *found]))
    with state.db.session() as session:
        submitted = submit_job(
            body.server_type, dep_ids, body.job_id, session=session, policy=state.policy
        )
        job = submitted.job
        if submitted.created:  # what placement just decided; nothing to read back
            response = JSONResponse(job_document(job, submitted.dep_ids, submitted.missing_dep_ids))
        else:
            response = answer(job, session=session)
        session.commit()
    return response


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    session: ReadSessionDep,
    state: Annotated[
        str | None, Query(max_length=40, description="Only jobs in this state.")
    ] = None,
    instance_id: Annotated[
        str | None, Query(alias="instanceId", max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> JSONResponse:
    """Jobs, newest first."""
    rows = job_core.list_jobs(session=session, state=state, instance_id=instance_id, limit=limit)
    return JSONResponse({"jobs": documents(rows, session=session)})


def _read(state: ServerState, job_id: str) -> dict[str, Any]:
    with state.db.read_session() as session:
        job = job_core.get_job(job_id, session=session)
        dep_ids, missing = job_core.deps_and_missing(job, session=session)
        return job_document(job, dep_ids, missing)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
async def get_job(
    request: Request,
    job_id: IdPath,
    wait_seconds: Annotated[
        float,
        Query(
            alias="waitSeconds", ge=0, le=MAX_WAIT_SECONDS, description="Wait for a state change."
        ),
    ] = 0,
    seen_state: Annotated[
        str | None,
        Query(
            alias="seenState",
            max_length=40,
            description="The state the caller last saw (default: current).",
        ),
    ] = None,
) -> JSONResponse:
    """One job; with `waitSeconds`, answer once its state differs from `seenState`."""
    state = server_state(request)
    wait = min(wait_seconds, state.settings.max_long_poll_seconds)
    entry = state.cache.hub.subscribe(WakeupKind.JOB, job_id) if wait > 0 else None
    try:
        doc = await run_in_threadpool(_read, state, job_id)
        seen = seen_state or doc["state"]
        deadline = time.monotonic() + wait
        while (
            entry is not None and doc["state"] == seen and doc["state"] not in TERMINAL_JOB_STATES
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            woken = await state.cache.hub.wait(entry, remaining)
            # A fresh event before re-reading, so a change during the read still wakes us.
            state.cache.hub.unsubscribe(WakeupKind.JOB, job_id, entry)
            entry = state.cache.hub.subscribe(WakeupKind.JOB, job_id)
            if not woken:
                break
            doc = await run_in_threadpool(_read, state, job_id)
    finally:
        if entry is not None:
            state.cache.hub.unsubscribe(WakeupKind.JOB, job_id, entry)
    return JSONResponse(doc)


@router.post("/{job_id}/start", response_model=JobPublic, responses=ERRORS)
async def start_job(job_id: IdPath, state: StateDep) -> JSONResponse:
    """ready → running."""
    return await run_in_threadpool(_start_job, state, job_id)


def _start_job(state: ServerState, job_id: str) -> JSONResponse:
    with state.db.session() as session:
        job = job_core.start_job(job_id, session=session)
        response = answer(job, session=session)
        session.commit()
    return response


@router.post("/{job_id}/complete", response_model=JobPublic, responses=ERRORS)
async def complete_job(job_id: IdPath, body: JobComplete, state: StateDep) -> JSONResponse:
    """Finish the job (`ok` true: completed, false: failed) and release its instance."""
    return await run_in_threadpool(_complete_job, state, job_id, body)


def _complete_job(state: ServerState, job_id: str, body: JobComplete) -> JSONResponse:
    with state.db.session() as session:
        job = job_core.complete_job(
            job_id, body.ok, body.error, session=session, policy=state.policy
        )
        response = answer(job, session=session)
        session.commit()
    return response
