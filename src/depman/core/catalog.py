"""The dependency catalog: validated entries, one row per model file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from depman.core.chunks import chunks
from depman.core.clock import utcnow
from depman.core.states import ACTIVE_JOB_STATES, ItemState, JobState
from depman.errors import Conflict, NotFound, ValidationFailed
from depman.store.models import Dep, Job, JobDep, ProfileStaticDep, QueueItem

AUTH_KINDS = ("none", "hf_token", "civitai_token")
DEP_KINDS = ("static", "dynamic")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Ids travel in URL paths and in `<depId>.<gen>` item ids: no slashes, spaces or controls.
ID_RE = re.compile(r"^[^/\\\s\x00-\x1f\x7f-\x9f]{1,200}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Where a catalog entry may write, relative to the ComfyUI folder: model files only,
# unless the server runs with DEPMAN_ALLOW_ANY_DESTINATION (docs/server.md).
MODEL_ROOTS = ("models/",)


@dataclass(frozen=True)
class DepSpec:
    """What a catalog entry says about a file (validated by `validate_dep`)."""

    url: str
    dest_relative_path: str
    kind: str = "dynamic"
    auth: str = "none"
    sha256: str | None = None
    expected_size_bytes: int | None = None


def validate_id(value: str, what: str) -> str:
    """Check an object id: 1-200 chars, no slash, whitespace or control character."""
    if not ID_RE.match(value or ""):
        raise ValidationFailed(
            f"{what} must be 1-200 characters without '/', '\\', whitespace or control characters"
        )
    return value


def validate_dest_path(path: str, *, allow_any_destination: bool = False) -> str:
    """A path relative to the ComfyUI folder that cannot leave it, under a model root
    unless `allow_any_destination` (the one place the destination rule lives)."""
    if not path:
        raise ValidationFailed("destRelativePath must be a non-empty relative path")
    if CONTROL_RE.search(path):
        raise ValidationFailed("destRelativePath must not contain control characters")
    if "\\" in path:
        raise ValidationFailed("destRelativePath must use '/' separators")
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        raise ValidationFailed("destRelativePath must be relative to the ComfyUI folder")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValidationFailed(
            "destRelativePath must stay inside the ComfyUI folder (no '..', '.' or empty parts)"
        )
    if not allow_any_destination and not (
        path.startswith(MODEL_ROOTS) and path not in MODEL_ROOTS and len(parts) > 1
    ):
        roots = ", ".join(MODEL_ROOTS)
        raise ValidationFailed(
            f"destRelativePath must be a file under {roots} (the server refuses other "
            "destinations unless started with DEPMAN_ALLOW_ANY_DESTINATION=1)"
        )
    return path


def validate_dep(spec: DepSpec, *, allow_any_destination: bool = False) -> DepSpec:
    """Check a catalog entry; answer it normalised (sha256 lower case)."""
    parts = urlsplit(spec.url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("url must be an http(s) URL with a host")
    if spec.auth not in AUTH_KINDS:
        raise ValidationFailed(f"auth must be one of {', '.join(AUTH_KINDS)}")
    if spec.kind not in DEP_KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(DEP_KINDS)}")
    validate_dest_path(spec.dest_relative_path, allow_any_destination=allow_any_destination)
    sha = spec.sha256
    if sha is not None:
        if not SHA256_RE.match(sha):
            raise ValidationFailed("sha256 must be 64 hexadecimal characters")
        sha = sha.lower()
    size = spec.expected_size_bytes
    if size is not None and (isinstance(size, bool) or size <= 0):
        raise ValidationFailed("expectedSizeBytes must be a positive integer")
    return DepSpec(
        url=spec.url,
        dest_relative_path=spec.dest_relative_path,
        kind=spec.kind,
        auth=spec.auth,
        sha256=sha,
        expected_size_bytes=size,
    )


def put_dep(
    dep_id: str, spec: DepSpec, *, session: Session, allow_any_destination: bool = False
) -> Dep:
    """Create or replace a catalog entry."""
    validate_id(dep_id, "depId")
    spec = validate_dep(spec, allow_any_destination=allow_any_destination)
    now = utcnow()
    dep = session.get(Dep, dep_id)
    if dep is None:
        dep = Dep(dep_id=dep_id, created_at=now)
        session.add(dep)
    dep.url = spec.url
    dep.auth = spec.auth
    dep.dest_relative_path = spec.dest_relative_path
    dep.sha256 = spec.sha256
    dep.expected_size_bytes = spec.expected_size_bytes
    dep.kind = spec.kind
    dep.updated_at = now
    session.flush()
    return dep


def get_dep(dep_id: str, *, session: Session) -> Dep:
    """One catalog entry, or NotFound."""
    dep = session.get(Dep, dep_id)
    if dep is None:
        raise NotFound(f"dep {dep_id!r} does not exist")
    return dep


def list_deps(*, session: Session) -> list[Dep]:
    """Every catalog entry, by id."""
    return list(session.scalars(select(Dep).order_by(Dep.dep_id)))


def missing_dep_ids(dep_ids: list[str], *, session: Session) -> list[str]:
    """Those of `dep_ids` that are not in the catalog."""
    if not dep_ids:
        return []
    known: set[str] = set()
    for part in chunks(dep_ids):
        known.update(session.scalars(select(Dep.dep_id).where(Dep.dep_id.in_(part))))
    return [dep_id for dep_id in dep_ids if dep_id not in known]


def delete_dep(dep_id: str, *, session: Session) -> None:
    """Remove a catalog entry no profile or job needs; drop its queued items."""
    dep = get_dep(dep_id, session=session)
    profile = session.scalar(
        select(ProfileStaticDep.profile_id).where(ProfileStaticDep.dep_id == dep_id).limit(1)
    )
    if profile is not None:
        raise Conflict(f"dep {dep_id!r} is a static dep of profile {profile!r}")
    active = session.scalar(
        select(JobDep.job_id)
        .join(Job, Job.job_id == JobDep.job_id)
        .where(JobDep.dep_id == dep_id)
        .where(Job.state.in_((*ACTIVE_JOB_STATES, JobState.PENDING.value)))
        .limit(1)
    )
    if active is not None:
        raise Conflict(f"dep {dep_id!r} is needed by job {active!r}")
    session.execute(
        delete(QueueItem)
        .where(QueueItem.dep_id == dep_id)
        .where(QueueItem.state == ItemState.QUEUED.value)
    )
    session.delete(dep)
    session.flush()
