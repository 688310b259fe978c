"""Admin API: a whole fleet document upserted in one transaction (`depman apply`)."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter

from depman.core import catalog, instances, profiles, server_types
from depman.errors import DepmanError, ValidationFailed
from depman.server.api.admin_catalog import (
    ERRORS,
    dep_spec,
    profile_spec,
    resolved_specs,
    server_type_spec,
)
from depman.server.deps import AdminDep, SessionDep, StateDep
from depman.server.schemas.admin import FleetIn, FleetOut

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep])


@router.post("/fleet", response_model=FleetOut, responses=ERRORS)
def apply_fleet(body: FleetIn, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Upsert deps, then profiles, server types and instances; all or nothing.

    Every dep's sources are resolved first, before the write transaction begins.
    """
    any_dest = state.policy.allow_any_destination
    resolved: dict[str, Any] = {}
    for dep_id, spec in resolved_specs(state, {k: dep_spec(v) for k, v in body.deps.items()}):
        if isinstance(spec, DepmanError):
            _located("deps", dep_id, spec)
        resolved[dep_id] = spec
    steps: list[tuple[str, dict[str, Any], Any]] = [
        (
            "deps",
            resolved,
            lambda k, v: catalog.put_dep(
                k, v, session=session, allow_any_destination=any_dest
            ),
        ),
        (
            "profiles",
            body.profiles,
            lambda k, v: profiles.put_profile(k, profile_spec(v), session=session),
        ),
        (
            "serverTypes",
            body.server_types,
            lambda k, v: server_types.put_server_type(k, server_type_spec(v), session=session),
        ),
        (
            "instances",
            body.instances,
            lambda k, v: instances.put_instance(k, v.ip, v.server_type, session=session),
        ),
    ]
    for section, docs, put in steps:
        for key, doc in docs.items():
            try:
                put(key, doc)
            except DepmanError as exc:
                _located(section, key, exc)
    session.commit()
    return {
        "deps": len(body.deps),
        "profiles": len(body.profiles),
        "serverTypes": len(body.server_types),
        "instances": len(body.instances),
        "warnings": [
            f"deps.{dep_id}: no sha256, so this file cannot use the fleet mirror and nodes "
            "cannot verify it (give sha256, or an hf:// / civitai:// url)"
            for dep_id, spec in resolved.items()
            if spec.sha256 is None and spec.files is None
        ],
    }


def _located(section: str, key: str, exc: DepmanError) -> NoReturn:
    """Raise `exc` with the document it is about in front (`depman apply` finds the line)."""
    if isinstance(exc, ValidationFailed):
        raise ValidationFailed(f"{section}.{key}: {exc.message}") from exc
    exc.message = f"{section}.{key}: {exc.message}"
    raise exc
