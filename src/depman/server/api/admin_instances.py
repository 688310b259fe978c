"""Admin API: instances with their inventory, and their queues."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from depman.core import instances, queue
from depman.core.clock import utcnow
from depman.core.inventory import held_by_instances
from depman.core.receipts import receipts_of
from depman.core.views import instance_document, queue_item_document
from depman.server.deps import AdminDep, FreshReadSessionDep, ReadSessionDep, SessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.admin import InstanceIn, InstanceOut, InstancesOut, QueueItemsOut
from depman.server.schemas.bounds import IdPath

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 422)
}


def _document(
    state: StateDep, row: Any, held: dict[str, str], receipts: list[Any] | None = None
) -> dict[str, Any]:
    return instance_document(
        row, held, now=utcnow(), live_ttl_seconds=state.policy.live_ttl_seconds, receipts=receipts
    )


@router.get("/instances", response_model=InstancesOut, responses=ERRORS)
def list_instances(session: FreshReadSessionDep, state: StateDep) -> dict[str, Any]:
    """Every instance with its inventory, heartbeat age and liveness."""
    rows = instances.list_instances(session=session)
    held = held_by_instances([r.instance_id for r in rows], session=session)
    return {"instances": [_document(state, r, held[r.instance_id]) for r in rows]}


@router.put("/instances/{instance_id}", response_model=InstanceOut, responses=ERRORS)
def put_instance(
    instance_id: IdPath, body: InstanceIn, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Create or update an instance record."""
    row = instances.put_instance(instance_id, body.ip, body.server_type, session=session)
    session.commit()
    return _document(state, row, held_by_instances([instance_id], session=session)[instance_id])


@router.get("/instances/{instance_id}", response_model=InstanceOut, responses=ERRORS)
def get_instance(
    instance_id: IdPath, session: FreshReadSessionDep, state: StateDep
) -> dict[str, Any]:
    """One instance with its `dependencyManager` inventory and verification receipts."""
    row = instances.get_instance(instance_id, session=session)
    held = held_by_instances([instance_id], session=session)[instance_id]
    return _document(state, row, held, receipts_of(instance_id, session=session))


@router.delete("/instances/{instance_id}", status_code=204, responses=ERRORS)
def delete_instance(instance_id: IdPath, session: SessionDep) -> Response:
    """Remove an instance, its inventory and queue; its active jobs fail."""
    instances.delete_instance(instance_id, session=session)
    session.commit()
    return Response(status_code=204)


@router.get("/queues/{instance_id}/items", response_model=QueueItemsOut, responses=ERRORS)
def list_queue_items(instance_id: IdPath, session: ReadSessionDep) -> dict[str, Any]:
    """Every queue item of an instance, with state, attempts, error and timestamps."""
    instances.get_instance(instance_id, session=session)
    items = queue.list_items(instance_id, session=session)
    return {"items": [queue_item_document(i) for i in items]}
