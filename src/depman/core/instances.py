"""Instances: admin records, agent registration, per-instance tokens (stored as sha256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depman.core.catalog import validate_id
from depman.core.clock import utcnow
from depman.core.pins import refresh_pins
from depman.core.policy import Policy
from depman.core.profiles import static_dep_ids
from depman.core.queue import enqueue
from depman.core.server_types import ENROLLMENT_OPEN, known_server_type
from depman.core.states import ACTIVE_JOB_STATES, PRIORITY_PREFETCH, JobState, Op
from depman.errors import AuthError, Forbidden, InstanceNotFound, NotFound
from depman.store.models import Instance, InstanceDep, Job, Profile, ServerType

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """The stored form of an agent token."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token() -> tuple[str, str]:
    """A new high-entropy token and its hash."""
    token = "dmt_" + secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


def put_instance(
    instance_id: str, ip: str | None, server_type: str, *, session: Session
) -> Instance:
    """Create or update an instance record (the agent identity and inventory are kept)."""
    validate_id(instance_id, "instanceId")
    validate_id(server_type, "serverType")
    known_server_type(server_type, session=session)
    row = session.get(Instance, instance_id)
    if row is None:
        row = Instance(
            instance_id=instance_id,
            created_at=utcnow(),
            downloading_dep_ids=[],
            failed_dep_ids=[],
            active_downloads=[],
            pinned_dep_ids=[],
        )
        session.add(row)
    row.ip = ip or None
    row.server_type = server_type
    session.flush()
    return row


def get_instance(instance_id: str, *, session: Session) -> Instance:
    """One instance, or NotFound."""
    row = session.get(Instance, instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id!r} does not exist")
    return row


def list_instances(*, session: Session) -> list[Instance]:
    """Every instance, by id."""
    return list(session.scalars(select(Instance).order_by(Instance.instance_id)))


def delete_instance(instance_id: str, *, session: Session, now: datetime | None = None) -> None:
    """Remove an instance with its inventory and queue; its active jobs fail."""
    now = now or utcnow()
    row = get_instance(instance_id, session=session)
    for job in session.scalars(
        select(Job).where(Job.instance_id == instance_id, Job.state.in_(ACTIVE_JOB_STATES))
    ):
        job.state = JobState.FAILED.value
        job.error = f"instance {instance_id} was deleted"
        job.finished_at = now
        job.updated_at = now
    session.delete(row)
    session.flush()


@dataclass(frozen=True)
class Registration:
    """What register answers."""

    instance: Instance
    token: str
    profile: Profile | None
    static_dep_ids: list[str]
    queued: list[str]


def register(
    server_type: str,
    agent_version: str,
    instance_id: str | None = None,
    instance_ip: str | None = None,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
    provider: str | None = None,
    provider_metadata: dict[str, Any] | None = None,
) -> Registration:
    """Find the instance by id, else by ip (or enrol it); issue a fresh token; queue the
    boot prefetch. An unknown server type is refused and changes nothing.

    `provider`, `provider_metadata` (field agents 0.9.20+) are kept when sent.
    """
    now = now or utcnow()
    # An unknown type is refused before anything is read for update or written.
    stype = known_server_type(server_type, session=session) if server_type else None
    row: Instance | None = None
    if instance_id:
        row = session.scalar(
            select(Instance).where(Instance.instance_id == instance_id).with_for_update()
        )
    elif instance_ip:
        row = session.scalar(
            select(Instance)
            .where(Instance.ip == instance_ip)
            .order_by(Instance.instance_id)
            .limit(1)
            .with_for_update()
        )
    if row is None:
        row = enrol(instance_id, instance_ip, stype, session=session, now=now)
    token, digest = issue_token()
    row.agent_token_hash = digest
    row.agent_version = (agent_version or "")[:100] or None
    row.registered_at = now
    row.lost_at = None  # a lost instance comes back clean: its jobs and queue went already
    # The first heartbeat after a (re)start takes the full diff path and counts as
    # becoming live, so pending jobs get a chance at once.
    row.inventory_digest = None
    if stype is not None and stype.server_type != row.server_type:
        row.server_type = stype.server_type
    if instance_ip and not row.ip:
        row.ip = instance_ip[:64]
    if provider is not None:
        row.provider = provider[:100]
    if provider_metadata is not None:
        row.provider_metadata = provider_metadata
    stype = session.get(ServerType, row.server_type)
    profile = session.get(Profile, stype.profile_id) if stype and stype.profile_id else None
    static = (
        static_dep_ids([profile.profile_id], session=session)[profile.profile_id] if profile else []
    )
    queued: list[str] = []
    if profile is not None and profile.prefetch_on_boot and static:
        held = set(
            session.scalars(
                select(InstanceDep.dep_id).where(InstanceDep.instance_id == row.instance_id)
            )
        )
        for dep_id in static:
            if dep_id not in held:
                enqueue(
                    row.instance_id,
                    dep_id,
                    Op.DOWNLOAD,
                    priority=PRIORITY_PREFETCH,
                    session=session,
                    now=now,
                )
                queued.append(dep_id)
    refresh_pins(row.instance_id, session=session)
    return Registration(
        instance=row, token=token, profile=profile, static_dep_ids=static, queued=queued
    )


def enrol(
    instance_id: str | None,
    instance_ip: str | None,
    stype: ServerType | None,
    *,
    session: Session,
    now: datetime,
) -> Instance:
    """The record of an undeclared agent, when its server type takes open enrolment.

    An agent known only by its address cannot enrol: addresses are shared (Vast.ai puts
    several rentals behind one public IP), ids are not.
    """
    if not instance_id:
        known_by = f"no instance is declared with ip {instance_ip!r} and " if instance_ip else ""
        raise InstanceNotFound(
            f"{known_by}the agent sent no instance id: set DM_INSTANCE_ID on the instance "
            "(on Vast.ai CONTAINER_ID is sent by itself), or declare the instance on the "
            "server (`depman apply`, or PUT /api/admin/instances/ID with its ip)"
        )
    if stype is None or stype.enrollment != ENROLLMENT_OPEN:
        type_name = stype.server_type if stype is not None else "?"
        raise InstanceNotFound(
            f"instance {instance_id!r} is not declared and server type {type_name!r} takes "
            "declared instances only (enrollment: declared): declare it on the server with "
            f"`depman apply` (an instances entry) or PUT /api/admin/instances/{instance_id}, "
            "or set the type's modelManagement.enrollment to open"
        )
    validate_id(instance_id, "instanceId")
    fresh = Instance(
        instance_id=instance_id,
        ip=(instance_ip or "")[:64] or None,
        server_type=stype.server_type,
        created_at=now,
        downloading_dep_ids=[],
        failed_dep_ids=[],
        active_downloads=[],
        pinned_dep_ids=[],
    )
    try:
        with session.begin_nested():  # a retried register may race its first attempt
            session.add(fresh)
    except IntegrityError:
        row = session.scalar(
            select(Instance).where(Instance.instance_id == instance_id).with_for_update()
        )
        if row is None:
            raise
        return row
    return fresh


def token_owner(token: str, *, session: Session) -> str | None:
    """The instance a token belongs to, if any."""
    return session.scalar(
        select(Instance.instance_id).where(Instance.agent_token_hash == hash_token(token)).limit(1)
    )


def stored_token_hash(instance_id: str, *, session: Session) -> str | None:
    """The stored token hash of an instance (None: unknown instance or never registered)."""
    return session.scalar(
        select(Instance.agent_token_hash).where(Instance.instance_id == instance_id)
    )


def verify_token(
    instance_id: str, token: str, stored_hash: str | None, *, session: Session
) -> None:
    """Accept a token for `instance_id`: 401 when it is nobody's, 403 when another instance's."""
    if stored_hash and hmac.compare_digest(stored_hash, hash_token(token)):
        return
    owner = token_owner(token, session=session)
    if owner is not None and owner != instance_id:
        raise Forbidden("this agent token belongs to another instance")
    raise AuthError("invalid or expired agent token: register again")
