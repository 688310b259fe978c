"""Admin API: the dependency catalog, profiles and server types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response

from depman.core import catalog, dep_sources, profiles, server_types
from depman.core.clock import utcnow
from depman.core.dep_holders import dep_locations
from depman.core.views import (
    dep_document,
    location_document,
    profile_document,
    server_type_document,
)
from depman.errors import DepmanError
from depman.server.deps import AdminDep, ReadSessionDep, SessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.admin import (
    DepIn,
    DepLocationsOut,
    DepOut,
    DepsOut,
    ProfileIn,
    ProfileOut,
    ProfilesOut,
    ServerTypeIn,
    ServerTypeOut,
    ServerTypesOut,
)
from depman.server.schemas.bounds import IdPath
from depman.server.state import ServerState

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 422)
}


def dep_spec(body: DepIn) -> catalog.DepSpec:
    """The domain form of a dep document."""
    files = None
    if body.files is not None:
        files = tuple(
            catalog.FileSpec(path=f.path, url=f.url, sha256=f.sha256, size_bytes=f.size_bytes)
            for f in body.files
        )
    return catalog.DepSpec(
        url=body.url,
        auth=body.auth,
        dest_relative_path=body.dest_relative_path,
        sha256=body.sha256,
        expected_size_bytes=body.expected_size_bytes,
        kind=body.kind,
        model_type=body.model_type,
        filename=body.filename,
        root=body.root,
        files=files,
        sources=dep_sources.written(body.sources),
    )


def resolved_specs(state: ServerState, specs: dict[str, catalog.DepSpec]) -> Iterator[
    tuple[str, catalog.DepSpec | DepmanError]
]:
    """Each entry with its sources resolved (or the error resolving it), in order.

    The stored entries are read in a read session that ends before any resolution:
    hf:// and civitai:// sources are resolved over the network, and that must never
    happen inside the write transaction (a slow Hub would hold every writer).
    """
    with state.db.read_session() as read:
        stored = catalog.stored_specs(list(specs), session=read)
    for dep_id, spec in specs.items():
        try:
            yield dep_id, catalog.resolve_spec(dep_id, spec, stored.get(dep_id), state.resolver)
        except DepmanError as exc:
            yield dep_id, exc


def profile_spec(body: ProfileIn) -> profiles.ProfileSpec:
    """The domain form of a profile document."""
    return profiles.ProfileSpec(
        static_dep_ids=body.static_dep_ids,
        prefetch_on_boot=body.prefetch_on_boot,
        dynamic_policy=body.dynamic_policy.model_dump(by_alias=True, exclude_none=True),
        root=body.root,
    )


def server_type_spec(body: ServerTypeIn) -> server_types.ServerTypeSpec:
    """The domain form of a server type document."""
    return server_types.ServerTypeSpec(
        mode=body.model_management.mode,
        profile_id=body.model_management.profile_id,
        enrollment=body.model_management.enrollment,
        max_active_jobs=body.max_active_jobs,
    )


@router.get("/deps", response_model=DepsOut, responses=ERRORS)
def list_deps(session: ReadSessionDep) -> dict[str, Any]:
    """Every catalog entry."""
    return {"deps": [dep_document(d) for d in catalog.list_deps(session=session)]}


@router.put("/deps/{dep_id}", response_model=DepOut, responses=ERRORS)
def put_dep(dep_id: IdPath, body: DepIn, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Create or replace a catalog entry (validated; hf:// and civitai:// sources resolved)."""
    ((_, spec),) = resolved_specs(state, {dep_id: dep_spec(body)})
    if isinstance(spec, DepmanError):
        raise spec
    dep = catalog.put_dep(
        dep_id,
        spec,
        session=session,
        allow_any_destination=state.policy.allow_any_destination,
    )
    session.commit()
    return dep_document(dep)


@router.get("/deps/{dep_id}", response_model=DepOut, responses=ERRORS)
def get_dep(dep_id: IdPath, session: ReadSessionDep) -> dict[str, Any]:
    """One catalog entry."""
    return dep_document(catalog.get_dep(dep_id, session=session))


@router.get("/deps/{dep_id}/instances", response_model=DepLocationsOut, responses=ERRORS)
def get_dep_locations(
    dep_id: IdPath, session: ReadSessionDep, state: StateDep
) -> dict[str, Any]:
    """The instances that hold the dep or have a download of it, with its state there."""
    rows = dep_locations(
        dep_id, session=session, now=utcnow(), live_ttl=float(state.settings.live_ttl)
    )
    return {"depId": dep_id, "instances": [location_document(r) for r in rows]}


@router.delete("/deps/{dep_id}", status_code=204, responses=ERRORS)
def delete_dep(dep_id: IdPath, session: SessionDep) -> Response:
    """Remove a catalog entry no profile or open job uses."""
    catalog.delete_dep(dep_id, session=session)
    session.commit()
    return Response(status_code=204)


@router.get("/profiles", response_model=ProfilesOut, responses=ERRORS)
def list_profiles(session: ReadSessionDep) -> dict[str, Any]:
    """Every profile."""
    rows = profiles.list_profiles(session=session)
    static = profiles.static_dep_ids([p.profile_id for p in rows], session=session)
    return {"profiles": [profile_document(p, static[p.profile_id]) for p in rows]}


@router.put("/profiles/{profile_id}", response_model=ProfileOut, responses=ERRORS)
def put_profile(profile_id: IdPath, body: ProfileIn, session: SessionDep) -> dict[str, Any]:
    """Create or replace a profile."""
    row = profiles.put_profile(profile_id, profile_spec(body), session=session)
    static = profiles.static_dep_ids([profile_id], session=session)[profile_id]
    session.commit()
    return profile_document(row, static)


@router.get("/profiles/{profile_id}", response_model=ProfileOut, responses=ERRORS)
def get_profile(profile_id: IdPath, session: ReadSessionDep) -> dict[str, Any]:
    """One profile."""
    row = profiles.get_profile(profile_id, session=session)
    return profile_document(row, profiles.static_dep_ids([profile_id], session=session)[profile_id])


@router.delete("/profiles/{profile_id}", status_code=204, responses=ERRORS)
def delete_profile(profile_id: IdPath, session: SessionDep) -> Response:
    """Remove a profile no server type uses."""
    profiles.delete_profile(profile_id, session=session)
    session.commit()
    return Response(status_code=204)


@router.get("/server-types", response_model=ServerTypesOut, responses=ERRORS)
def list_server_types(session: ReadSessionDep) -> dict[str, Any]:
    """Every server type."""
    rows = server_types.list_server_types(session=session)
    return {"serverTypes": [server_type_document(r) for r in rows]}


@router.put("/server-types/{server_type}", response_model=ServerTypeOut, responses=ERRORS)
def put_server_type(server_type: IdPath, body: ServerTypeIn, session: SessionDep) -> dict[str, Any]:
    """Create or replace a server type."""
    row = server_types.put_server_type(server_type, server_type_spec(body), session=session)
    session.commit()
    return server_type_document(row)


@router.get("/server-types/{server_type}", response_model=ServerTypeOut, responses=ERRORS)
def get_server_type(server_type: IdPath, session: ReadSessionDep) -> dict[str, Any]:
    """One server type."""
    return server_type_document(server_types.get_server_type(server_type, session=session))


@router.delete("/server-types/{server_type}", status_code=204, responses=ERRORS)
def delete_server_type(server_type: IdPath, session: SessionDep) -> Response:
    """Remove a server type no instance has."""
    server_types.delete_server_type(server_type, session=session)
    session.commit()
    return Response(status_code=204)
