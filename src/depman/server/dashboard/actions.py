"""The dashboard's operator actions: small forms that post here, then back to the page.

Each action runs the same core function as the admin API (`depman.core.operator`),
is recorded in the audit log as `dashboard@<address>`, and answers a 303 to the
page it came from with a notice (or the refusal) in the query string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from depman.core import operator
from depman.core.jobs import jobs_waiting_for
from depman.core.states import ItemState
from depman.errors import Conflict, DepmanError
from depman.server.dashboard import auth
from depman.server.dashboard.csrf import FIELD, CsrfRejected, check_csrf
from depman.server.deps import SessionDep
from depman.server.state import server_state
from depman.store.models import QueueItem

router = APIRouter(prefix="/actions", dependencies=[Depends(auth.require_page)])
IdField = Annotated[str, Form(min_length=1, max_length=300)]
TokenField = Annotated[str, Form(alias=FIELD, max_length=200)]
ReasonField = Annotated[str, Form(max_length=300)]
BackField = Annotated[str, Form(max_length=2048)]


def _actor(request: Request) -> str:
    return f"dashboard@{request.client.host if request.client else '?'}"


def _run(
    request: Request,
    session: Session,
    token: str,
    back: str,
    done: str | Callable[[Any], str],
    work: Callable[[str], object],
) -> Response:
    """Run `work` as the page's operator; `done` is the notice, or makes it from the result."""
    target = auth.safe_next(back)
    try:
        check_csrf(request, token)
        result = work(_actor(request))
        session.commit()
        query = {"notice": done if isinstance(done, str) else done(result)}
    except CsrfRejected as exc:
        return Response(f"refused: {exc}", status_code=403, media_type="text/plain")
    except DepmanError as exc:
        session.rollback()
        query = {"refused": exc.message}
    path, _, old_query = target.partition("?")
    kept = [(k, v) for k, v in parse_qsl(old_query) if k not in ("notice", "refused")]
    return RedirectResponse(f"{path}?{urlencode([*kept, *query.items()])}", status_code=303)


@router.post("/items/cancel")
def cancel_item(
    request: Request,
    session: SessionDep,
    instance_id: IdField,
    dep_id: IdField,
    csrf: TokenField = "",
    reason: ReasonField = "",
    confirmed: Annotated[bool, Form()] = False,
    back: BackField = "/",
) -> Response:
    """Cancel a queue item; one that jobs wait for only once the operator confirmed it."""
    policy = server_state(request).policy
    waiting: list[str] = []

    def work(actor: str) -> QueueItem:
        waiting.extend(jobs_waiting_for(instance_id, dep_id, session=session))
        if waiting and not confirmed:
            raise Conflict(
                f"{_jobs(waiting)} on {instance_id} {'waits' if len(waiting) == 1 else 'wait'} "
                f"for {dep_id}: cancelling it moves {'it' if len(waiting) == 1 else 'them'} "
                "to another instance or fails it. Confirm to cancel."
            )
        return operator.cancel_item(
            instance_id,
            dep_id,
            reason.strip() or "cancelled from the dashboard",
            actor=actor,
            session=session,
            policy=policy,
        )

    def done(item: QueueItem) -> str:
        if item.state == ItemState.RUNNING.value:
            # The download runs until the agent's next check; the row says "cancelling".
            return (
                f"Cancel of {dep_id} sent: the agent stops the download at its next check "
                "and the item then shows cancelled."
            )
        moved = f" {_jobs(waiting)} moved or failed." if waiting else ""
        return f"Cancelled {dep_id}.{moved}"

    return _run(request, session, csrf, back, done, work)


def _jobs(job_ids: list[str]) -> str:
    return ("Job " if len(job_ids) == 1 else "Jobs ") + ", ".join(job_ids)


@router.post("/items/retry")
def retry_item(
    request: Request,
    session: SessionDep,
    instance_id: IdField,
    dep_id: IdField,
    csrf: TokenField = "",
    back: BackField = "/",
) -> Response:
    """Retry a failed or backing-off item now."""
    return _run(
        request,
        session,
        csrf,
        back,
        f"Retrying {dep_id} now.",
        lambda actor: operator.retry_item(instance_id, dep_id, None, actor=actor, session=session),
    )


@router.post("/deps/delete")
def delete_dep(
    request: Request,
    session: SessionDep,
    instance_id: IdField,
    dep_id: IdField,
    csrf: TokenField = "",
    force: Annotated[bool, Form()] = False,
    back: BackField = "/",
) -> Response:
    """Queue the removal of a dep's file."""
    return _run(
        request,
        session,
        csrf,
        back,
        f"Delete of {dep_id} queued.",
        lambda actor: operator.delete_dep(instance_id, dep_id, force, actor=actor, session=session),
    )


@router.post("/instances/drain")
def drain_instance(
    request: Request,
    session: SessionDep,
    instance_id: IdField,
    csrf: TokenField = "",
    drained: Annotated[bool, Form()] = True,
    back: BackField = "/",
) -> Response:
    """Drain or reopen an instance."""
    done = f"{instance_id} {'drained' if drained else 'reopened'}."
    return _run(
        request,
        session,
        csrf,
        back,
        done,
        lambda actor: operator.set_drained(instance_id, drained, actor=actor, session=session),
    )


@router.post("/jobs/cancel")
def cancel_job(
    request: Request,
    session: SessionDep,
    job_id: IdField,
    csrf: TokenField = "",
    reason: ReasonField = "",
    back: BackField = "/jobs",
) -> Response:
    """Cancel an open job."""
    policy = server_state(request).policy
    return _run(
        request,
        session,
        csrf,
        back,
        f"Cancelled job {job_id}.",
        lambda actor: operator.cancel_job(
            job_id,
            reason.strip() or "cancelled from the dashboard",
            actor=actor,
            session=session,
            policy=policy,
        ),
    )
