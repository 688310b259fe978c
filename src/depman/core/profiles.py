"""Dependency profiles: a server type's static deps, boot prefetch and dynamic cache policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.orm import Session

from depman.core.catalog import ROOT_RE, missing_dep_ids, validate_id
from depman.core.clock import utcnow
from depman.core.reconcile import reconcile_static_deps
from depman.errors import Conflict, NotFound, ValidationFailed
from depman.store.models import Profile, ProfileStaticDep, ServerType

POLICY_BOOL_KEYS = ("enabled",)
POLICY_INT_KEYS = ("minFreeBytes", "maxDynamicBytes", "evictionBatchMax", "pinTtlSeconds")


@dataclass(frozen=True)
class ProfileSpec:
    """A profile document, snake_cased."""

    static_dep_ids: list[str] = field(default_factory=list)
    prefetch_on_boot: bool = False
    dynamic_policy: dict[str, Any] = field(default_factory=dict)
    root: str | None = None


def validate_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """Keep the known dynamicPolicy keys, checking their types."""
    clean: dict[str, Any] = {}
    for key in POLICY_BOOL_KEYS:
        if key in policy and policy[key] is not None:
            if not isinstance(policy[key], bool):
                raise ValidationFailed(f"dynamicPolicy.{key} must be a boolean")
            clean[key] = policy[key]
    for key in POLICY_INT_KEYS:
        value = policy.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationFailed(f"dynamicPolicy.{key} must be a non-negative integer")
        clean[key] = value
    return clean


def put_profile(profile_id: str, spec: ProfileSpec, *, session: Session) -> Profile:
    """Create or replace a profile; its static deps must be in the catalog."""
    validate_id(profile_id, "profileId")
    static = list(dict.fromkeys(spec.static_dep_ids))
    unknown = missing_dep_ids(static, session=session)
    if unknown:
        raise ValidationFailed(f"staticDepIds not in the catalog: {', '.join(unknown)}")
    policy = validate_policy(spec.dynamic_policy)
    if spec.root is not None and not ROOT_RE.match(spec.root):
        raise ValidationFailed(
            "root must name a section of extra_model_paths.yaml (letters, digits, '_', '-', '.')"
        )
    profile = session.get(Profile, profile_id)
    old_static: list[str] = []
    prefetched = False
    if profile is None:
        profile = Profile(profile_id=profile_id)
        session.add(profile)
    else:
        old_static = static_dep_ids([profile_id], session=session)[profile_id]
        prefetched = profile.prefetch_on_boot
    profile.prefetch_on_boot = spec.prefetch_on_boot
    profile.dynamic_policy = policy
    profile.root = spec.root
    profile.updated_at = utcnow()
    session.flush()
    session.execute(delete(ProfileStaticDep).where(ProfileStaticDep.profile_id == profile_id))
    session.add_all(
        ProfileStaticDep(profile_id=profile_id, dep_id=dep_id, position=pos)
        for pos, dep_id in enumerate(static)
    )
    session.flush()
    # Running instances follow (the added deps are queued where the profile prefetches).
    added = [d for d in static if d not in old_static or not prefetched]
    if set(static) != set(old_static) or (added and spec.prefetch_on_boot):
        users = session.scalars(
            select(ServerType.server_type).where(ServerType.profile_id == profile_id)
        ).all()
        reconcile_static_deps(
            users, added if spec.prefetch_on_boot else [], session=session, now=profile.updated_at
        )
    return profile


def get_profile(profile_id: str, *, session: Session) -> Profile:
    """One profile, or NotFound."""
    profile = session.get(Profile, profile_id)
    if profile is None:
        raise NotFound(f"profile {profile_id!r} does not exist")
    return profile


def list_profiles(*, session: Session) -> list[Profile]:
    """Every profile, by id."""
    return list(session.scalars(select(Profile).order_by(Profile.profile_id)))


def static_dep_ids(profile_ids: list[str], *, session: Session) -> dict[str, list[str]]:
    """The static dep ids of each profile, in their declared order (one query)."""
    result: dict[str, list[str]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return result
    rows = session.execute(
        select(ProfileStaticDep.profile_id, ProfileStaticDep.dep_id)
        .where(ProfileStaticDep.profile_id.in_(profile_ids))
        .order_by(ProfileStaticDep.profile_id, ProfileStaticDep.position)
    )
    for profile_id, dep_id in rows:
        result[profile_id].append(dep_id)
    return result


STATIC_OF_TYPE = (
    select(ProfileStaticDep.dep_id)
    .join(ServerType, ServerType.profile_id == ProfileStaticDep.profile_id)
    .where(ServerType.server_type == bindparam("p_server_type"))
    .order_by(ProfileStaticDep.position)
)


def static_dep_ids_of_type(server_type: str, *, conn: Connection) -> list[str]:
    """The static deps of a server type's profile now (none without a profile)."""
    return list(conn.execute(STATIC_OF_TYPE, {"p_server_type": server_type}).scalars())


def delete_profile(profile_id: str, *, session: Session) -> None:
    """Remove a profile no server type uses."""
    profile = get_profile(profile_id, session=session)
    user = session.scalar(
        select(ServerType.server_type).where(ServerType.profile_id == profile_id).limit(1)
    )
    if user is not None:
        raise Conflict(f"profile {profile_id!r} is used by server type {user!r}")
    session.execute(delete(ProfileStaticDep).where(ProfileStaticDep.profile_id == profile_id))
    session.delete(profile)
    session.flush()
