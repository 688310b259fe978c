"""Admin API: ComfyUI workflows in — the deps they need, and importing unknown models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from depman.core import workflow_deps
from depman.core.workflows import workflow_models
from depman.server.api.admin_catalog import ERRORS
from depman.server.deps import AdminDep, StateDep
from depman.server.schemas.workflows import (
    WorkflowDepsOut,
    WorkflowImportIn,
    WorkflowImportOut,
    WorkflowIn,
)

router = APIRouter(prefix="/api/admin/workflows", tags=["admin"], dependencies=[AdminDep])


@router.post("/deps", response_model=WorkflowDepsOut, responses=ERRORS)
def workflow_deps_of(body: WorkflowIn, state: StateDep) -> dict[str, Any]:
    """The model files the workflow references, matched against the catalog."""
    refs = workflow_models(body.workflow)  # parsed before any session opens
    with state.db.read_session() as session:
        matches = workflow_deps.match_workflow(refs, session=session)
    models = [m.document() for m in matches]
    return {
        "models": models,
        "depIds": list(dict.fromkeys(m.dep_ids[0] for m in matches if m.dep_ids)),
        "unknown": [doc for doc in models if not doc["depIds"]],
    }


@router.post("/import", response_model=WorkflowImportOut, responses=ERRORS)
def import_workflow(body: WorkflowImportIn, state: StateDep) -> dict[str, Any]:
    """Add catalog entries for the workflow's unknown models that carry a url."""
    refs = workflow_models(body.workflow)  # parsed before any session opens
    with state.db.session() as session:
        result = workflow_deps.import_workflow(
            refs,
            read=state.db.read_session,
            write=session,
            kind=body.kind,
            auth=body.auth,
            resolve=state.resolver,
        )
        session.commit()
    return {"created": result.created, "skipped": result.skipped, "known": result.known}
