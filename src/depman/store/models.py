"""SQLAlchemy tables of the control plane.

What is queried lives in columns and rows (inventory, queue items, job deps);
only opaque documents (a profile's dynamic policy, a job's history) are JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite keeps no offset, so values are stored as naive UTC and read back aware;
    without this, comparing a SQLite value with `datetime.now(UTC)` raises.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _tz() -> UtcDateTime:
    return UtcDateTime()


class Dep(Base):
    """A catalog entry: one model file and where it comes from."""

    __tablename__ = "deps"

    dep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    auth: Mapped[str] = mapped_column(String(20), default="none")
    dest_relative_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expected_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(10), default="dynamic")
    # ComfyUI folder key and file name (given, or read from a models/<folder>/ path).
    model_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    filename: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Section of the nodes' extra_model_paths.yaml to install into (None: the ComfyUI folder).
    root: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The hf:// or civitai:// source as written, and the revision it was pinned to.
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    revision: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # A folder model: [{path, url, sha256?, sizeBytes?, source?, revision?}].
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Further URLs for the same bytes, in order after `url`: [{url, source?, revision?}].
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_tz())
    updated_at: Mapped[datetime] = mapped_column(_tz())


class Profile(Base):
    """A dependency profile: static deps, prefetch flag, dynamic cache policy."""

    __tablename__ = "profiles"

    profile_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    prefetch_on_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    dynamic_policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Default model root (extra_model_paths.yaml section) of the profile's instances.
    root: Mapped[str | None] = mapped_column(String(100), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(_tz())


class ProfileStaticDep(Base):
    """One static dep of a profile (rows, so prefetch is a join)."""

    __tablename__ = "profile_static_deps"

    profile_id: Mapped[str] = mapped_column(
        ForeignKey("profiles.profile_id", ondelete="CASCADE"), primary_key=True
    )
    dep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class ServerType(Base):
    """A ComfyUI server type and how its models are managed."""

    __tablename__ = "server_types"

    server_type: Mapped[str] = mapped_column(String(200), primary_key=True)
    mode: Mapped[str] = mapped_column(String(50), default="dependency_manager_v1")
    profile_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    max_active_jobs: Mapped[int] = mapped_column(Integer, default=1)
    # How instances of this type join: "open" (an undeclared agent enrols itself) or "declared".
    enrollment: Mapped[str] = mapped_column(String(20), default="open", server_default="open")
    updated_at: Mapped[datetime] = mapped_column(_tz())


class Instance(Base):
    """A GPU instance, its agent identity and the scalar part of its last heartbeat."""

    __tablename__ = "instances"
    # Also ix_instances_type_free (server_type, coalesce(disk_free_bytes, 0) DESC,
    # instance_id): an expression index, created by migration 0002 per dialect.

    instance_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    server_type: Mapped[str] = mapped_column(String(200), index=True)
    agent_token_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    agent_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    registered_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Not indexed: every heartbeat rewrites it, and an index would keep those updates
    # from being HOT (in-place) on PostgreSQL (migration 0003).
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    disk_total_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_used_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dynamic_bytes_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    queue_depth: Mapped[int | None] = mapped_column(Integer, nullable=True)
    downloading_dep_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    failed_dep_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    active_downloads: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Digest of the installed lists of the last heartbeat: an unchanged heartbeat
    # compares one string instead of diffing hundreds of inventory rows.
    inventory_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Union of the deps of this instance's waiting/ready/running jobs, kept by the job
    # transitions so the heartbeat answers its pins from the row it already updates.
    pinned_dep_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A drained instance gets no new jobs; the ones it has finish there.
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    # Telemetry later field agents send (register, heartbeat), kept for the operator.
    provider: Mapped[str | None] = mapped_column(String(100), nullable=True)
    provider_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    disk_stats_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    disk_diagnostics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Set by the maintenance sweep when no heartbeat came for `instance_lost_seconds`
    # (its jobs moved, its queue cancelled, its token voided); cleared by register.
    lost_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # The last sweep that kept it through a wide silence (core/lost.py): its lost
    # timeout counts from here too, so an agent still reconnecting is not lost as the
    # silence ends.
    silence_grace_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Bytes this instance's downloads received from the fleet mirror and from upstreams.
    mirror_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    upstream_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(_tz())


class InstanceDep(Base):
    """One dep an instance holds, per its latest heartbeat."""

    __tablename__ = "instance_deps"
    # Covering: the holders of a dep come from the index alone (placement).
    __table_args__ = (Index("ix_instance_deps_dep_id", "dep_id", "instance_id"),)

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.instance_id", ondelete="CASCADE"), primary_key=True
    )
    dep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    since: Mapped[datetime] = mapped_column(_tz())


class DepReceipt(Base):
    """The agent's proof of the last file it verified for a dep on an instance.

    Sent with a `succeeded` status; kept when a heartbeat later drops the dep (what
    was verified, and when, stays visible), replaced by the next one.
    """

    __tablename__ = "dep_receipts"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.instance_id", ondelete="CASCADE"), primary_key=True
    )
    dep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(10))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    dest_relative_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    final_path_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The item (`<depId>.<generation>`) whose success carried it, and whether it
    # matched the catalog then (sha256 when the catalog has one, else the size).
    item_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    matches_catalog: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(_tz())


class QueueItem(Base):
    """The download/touch item of one dep on one instance; `generation` names its itemId."""

    __tablename__ = "queue_items"
    __table_args__ = (
        UniqueConstraint("instance_id", "dep_id"),
        Index("ix_queue_items_dispatch", "instance_id", "state", "priority", "enqueued_at"),
        Index("ix_queue_items_state", "state"),
        Index("ix_queue_items_upstream_host", "upstream_host", "state"),
        Index("ix_queue_items_waiting_upstream", "waiting_upstream"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.instance_id", ondelete="CASCADE")
    )
    dep_id: Mapped[str] = mapped_column(String(200))
    generation: Mapped[int] = mapped_column(Integer, default=1)
    op: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20))
    # 0 = a job needs it, 1 = prefetch: jobs' deps go first.
    priority: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    enqueued_at: Mapped[datetime] = mapped_column(_tz())
    started_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Last time a heartbeat listed the dep as downloading (or the running status came in).
    last_progress_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Not handed out by polls before this time: a failed static/prefetch item waits
    # here for its retry (the sweep queues it again), an agent backing off likewise.
    next_attempt_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Failures in a row (reset by a success): the retry backoff doubles with each.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When this generation first failed retryably: bounds the retry window.
    first_failed_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Operator actions the agent reads from the queue and the queue-item check.
    cancel_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    force_retry: Mapped[bool] = mapped_column(Boolean, default=False)
    force_retry_after_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(_tz())
    # Upstream caps (core/upstream.py): the capped host a poll handed this download out
    # for and when (a lease the next poll renews), or the host it waits for.
    upstream_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    handed_out_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    waiting_upstream: Mapped[str | None] = mapped_column(String(255), nullable=True)


class UpstreamSlot(Base):
    """A fleet-wide download slot of a capped upstream host held outside the queues."""

    __tablename__ = "upstream_slots"

    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    expires_at: Mapped[datetime] = mapped_column(_tz())


class OperatorAction(Base):
    """One operator action: who did what to which instance, dep or job, and when."""

    __tablename__ = "operator_actions"
    __table_args__ = (
        Index("ix_operator_actions_at", "at"),
        Index("ix_operator_actions_instance_id", "instance_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(_tz())
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    instance_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    dep_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    """A dependency-managed job and its reservation."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_instance_state", "instance_id", "state"),
    )

    job_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    server_type: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(20))
    instance_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    placements: Mapped[int] = mapped_column(Integer, default=0)
    # [{"instanceId", "at", "event", "reason"}]: where the job went and why.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(_tz())
    placed_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Bytes downloaded for this job's deps on its instance while it waited for them.
    mirror_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    upstream_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(_tz())


class JobDep(Base):
    """One dep a job needs."""

    __tablename__ = "job_deps"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    dep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class AgentBuild(Base):
    """The agent build published for a server type: its bytes, served to the agents it targets.

    Kept in the database (a few hundred KB each, one per server type), so every
    server process serves it on SQLite and PostgreSQL alike.
    """

    __tablename__ = "agent_builds"

    server_type: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rollout_percent: Mapped[int] = mapped_column(Integer, default=100)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    published_at: Mapped[datetime] = mapped_column(_tz())


class RevokedSession(Base):
    """A dashboard session logged out before its expiry (by its session id's digest)."""

    __tablename__ = "revoked_sessions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(_tz(), index=True)


class MirrorObject(Base):
    """One file of the fleet mirror, by its sha256: wanted, filling, stored or failed.

    `stored` means the bytes sit verified at `<prefix>/sha256/<sha256>` (or, for a
    read-only https mirror, that the object answered with the right size).
    """

    __tablename__ = "mirror_objects"
    __table_args__ = (Index("ix_mirror_objects_state", "state", "next_attempt_at"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The catalog entry whose fill asked for it (several entries may share the bytes).
    dep_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    # The URL the last fill read (upstream), for the operator.
    source_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_at: Mapped[datetime] = mapped_column(_tz())
    started_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    stored_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(_tz())


class PeriodicRun(Base):
    """When a periodic task last started anywhere in the fleet's server processes.

    Each process keeps its own timer; this row is what keeps them, together, to the
    task's interval.
    """

    __tablename__ = "periodic_runs"

    task: Mapped[str] = mapped_column(String(40), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(_tz())
