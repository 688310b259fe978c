"""Server types: whether depman manages a type's models, with which profile, how many jobs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.catalog import validate_id
from depman.core.clock import utcnow
from depman.core.profiles import static_dep_ids
from depman.core.reconcile import reconcile_static_deps
from depman.errors import Conflict, NotFound, UnknownServerType, ValidationFailed
from depman.store.models import Instance, Profile, ServerType

MANAGED_MODE = "dependency_manager_v1"
# How instances of a type join: an undeclared agent enrols itself, or only declared ones register.
ENROLLMENT_OPEN = "open"
ENROLLMENT_DECLARED = "declared"
ENROLLMENTS = (ENROLLMENT_OPEN, ENROLLMENT_DECLARED)


@dataclass(frozen=True)
class ServerTypeSpec:
    """A server type document (`modelManagement` flattened)."""

    mode: str = MANAGED_MODE
    profile_id: str | None = None
    max_active_jobs: int = 1
    enrollment: str = ENROLLMENT_OPEN


def put_server_type(server_type: str, spec: ServerTypeSpec, *, session: Session) -> ServerType:
    """Create or replace a server type; its profile must exist."""
    validate_id(server_type, "serverType")
    if not spec.mode:
        raise ValidationFailed("modelManagement.mode must be a non-empty string")
    if spec.enrollment not in ENROLLMENTS:
        raise ValidationFailed(
            f"modelManagement.enrollment must be one of {', '.join(ENROLLMENTS)}, "
            f"not {spec.enrollment!r}"
        )
    if spec.max_active_jobs < 1:
        raise ValidationFailed("maxActiveJobs must be at least 1")
    if spec.profile_id is not None and session.get(Profile, spec.profile_id) is None:
        raise ValidationFailed(f"modelManagement.profileId {spec.profile_id!r} does not exist")
    row = session.get(ServerType, server_type)
    old_profile = row.profile_id if row is not None else None
    if row is None:
        row = ServerType(server_type=server_type)
        session.add(row)
    row.mode = spec.mode
    row.profile_id = spec.profile_id
    row.max_active_jobs = spec.max_active_jobs
    row.enrollment = spec.enrollment
    row.updated_at = utcnow()
    session.flush()
    if spec.profile_id != old_profile:
        # Its running instances follow their new profile (`depman.core.reconcile`).
        profile = session.get(Profile, spec.profile_id) if spec.profile_id else None
        added: list[str] = []
        if profile is not None and profile.prefetch_on_boot:
            added = static_dep_ids([profile.profile_id], session=session)[profile.profile_id]
        reconcile_static_deps([server_type], added, session=session, now=row.updated_at)
    return row


def get_server_type(server_type: str, *, session: Session) -> ServerType:
    """One server type, or NotFound."""
    row = session.get(ServerType, server_type)
    if row is None:
        raise NotFound(f"server type {server_type!r} does not exist")
    return row


def known_server_type(server_type: str, *, session: Session) -> ServerType:
    """The named server type, or the error an agent or operator can act on: the known names."""
    row = session.get(ServerType, server_type)
    if row is not None:
        return row
    names = list(session.scalars(select(ServerType.server_type).order_by(ServerType.server_type)))
    known = ", ".join(names) if names else "none yet"
    raise UnknownServerType(
        f"server type {server_type!r} is not known to this server (known server types: "
        f"{known}); declare it with `depman apply` or PUT /api/admin/server-types/{server_type}"
    )


def list_server_types(*, session: Session) -> list[ServerType]:
    """Every server type, by name."""
    return list(session.scalars(select(ServerType).order_by(ServerType.server_type)))


def delete_server_type(server_type: str, *, session: Session) -> None:
    """Remove a server type no instance has."""
    row = get_server_type(server_type, session=session)
    user = session.scalar(
        select(Instance.instance_id).where(Instance.server_type == server_type).limit(1)
    )
    if user is not None:
        raise Conflict(f"server type {server_type!r} is used by instance {user!r}")
    session.delete(row)
    session.flush()
