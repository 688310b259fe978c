"""Admin API: a whole fleet document upserted in one transaction (`depman apply`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from depman.core import catalog, instances, profiles, server_types
from depman.errors import DepmanError, ValidationFailed
from depman.server.api.admin_catalog import ERRORS, dep_spec, profile_spec, server_type_spec
from depman.server.deps import AdminDep, SessionDep, StateDep
from depman.server.schemas.admin import FleetIn, FleetOut

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep])


@router.post("/fleet", response_model=FleetOut, responses=ERRORS)
def apply_fleet(body: FleetIn, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Upsert deps, then profiles, server types and instances; all or nothing."""
    any_dest = state.policy.allow_any_destination
    steps: list[tuple[str, dict[str, Any], Any]] = [
        (
            "deps",
            body.deps,
            lambda k, v: catalog.put_dep(
                k,
                dep_spec(v),
                session=session,
                resolve=state.resolver,
                allow_any_destination=any_dest,
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
            except ValidationFailed as exc:
                raise ValidationFailed(f"{section}.{key}: {exc.message}") from exc
            except DepmanError as exc:
                exc.message = f"{section}.{key}: {exc.message}"
                raise
    session.commit()
    return {
        "deps": len(body.deps),
        "profiles": len(body.profiles),
        "serverTypes": len(body.server_types),
        "instances": len(body.instances),
    }
