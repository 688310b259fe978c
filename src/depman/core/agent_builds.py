"""Agent builds an operator publishes per server type, and which instances are offered one.

One build per server type: publishing again replaces it (a new file, or the same
file with another rollout percentage). The bytes are kept in the database so any
server process serves them. An instance of the type is offered the build
(`agentUpdate` in register and heartbeat answers) while the agent version it
registered with differs from the build's, if it falls inside the rollout
percentage: a stable choice by the hash of its instance id, so raising the
percentage only adds instances, and the same instances go first for every build.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from depman.core.catalog import validate_id
from depman.core.clock import utcnow
from depman.errors import NotFound, ValidationFailed
from depman.store.models import AgentBuild, Instance, ServerType

# depman's agent is ~100 KB; a field agent script is smaller still. Anything this big
# is a mistake (a wheel, a model), and every copy is held in memory while served.
MAX_BUILD_BYTES = 32 * 1024**2
MAX_VERSION_CHARS = 100
# Where a depman agent zipapp names its version (depman/agent/protocol.py).
PYZ_VERSION_MEMBER = "depman/agent/protocol.py"
_VERSION_RE = re.compile(r"^AGENT_VERSION\s*=\s*[\"']([^\"'\n]+)[\"']", re.MULTILINE)


@dataclass(frozen=True)
class BuildTarget:
    """What an agent of the type should run (no bytes)."""

    server_type: str
    version: str
    sha256: str
    size_bytes: int
    rollout_percent: int
    published_at: datetime


def pyz_version(data: bytes) -> str | None:
    """The AGENT_VERSION inside a depman agent zipapp, or None when `data` is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            source = archive.read(PYZ_VERSION_MEMBER).decode("utf-8", "replace")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return None
    match = _VERSION_RE.search(source)
    return match.group(1).strip() if match else None


def in_rollout(instance_id: str, percent: int) -> bool:
    """Whether `instance_id` is among the first `percent` % of instances (stable)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:4], "big") % 100
    return bucket < percent


def offered_build(
    target: BuildTarget | None, instance_id: str, agent_version: str | None
) -> BuildTarget | None:
    """The build to offer this instance now, if any."""
    if target is None or (agent_version or "") == target.version:
        return None
    return target if in_rollout(instance_id, target.rollout_percent) else None


def _target(row: AgentBuild) -> BuildTarget:
    return BuildTarget(
        row.server_type, row.version, row.sha256, row.size_bytes, row.rollout_percent,
        row.published_at,
    )


def publish_build(
    server_type: str,
    data: bytes,
    *,
    version: str | None,
    rollout_percent: int,
    session: Session,
) -> BuildTarget:
    """Store `data` as the build of `server_type`, replacing any earlier one."""
    validate_id(server_type, "serverType")
    if not data:
        raise ValidationFailed("the agent build is empty")
    if len(data) > MAX_BUILD_BYTES:
        raise ValidationFailed(
            f"the agent build is {len(data)} bytes; at most {MAX_BUILD_BYTES} are accepted"
        )
    if not 0 <= rollout_percent <= 100:
        raise ValidationFailed(f"rolloutPercent must be 0..100, got {rollout_percent}")
    known = session.get(ServerType, server_type) is not None or session.scalar(
        select(Instance.instance_id).where(Instance.server_type == server_type).limit(1)
    )
    if not known:
        raise NotFound(f"server type {server_type!r} does not exist (no server type, no instance)")
    embedded = pyz_version(data)
    version = (version or "").strip() or None
    if version is None:
        if embedded is None:
            raise ValidationFailed(
                "the build is not a depman agent zipapp whose version can be read; "
                "give its version (--version)"
            )
        version = embedded
    elif embedded is not None and embedded != version:
        # The agent registers with its embedded version: it would be offered its own
        # build again after every update.
        raise ValidationFailed(
            f"version {version!r} differs from the version inside the build ({embedded!r})"
        )
    if len(version) > MAX_VERSION_CHARS or not version.isprintable():
        raise ValidationFailed(f"version must be 1..{MAX_VERSION_CHARS} printable characters")
    row = session.get(AgentBuild, server_type)
    if row is None:
        row = AgentBuild(server_type=server_type)
        session.add(row)
    row.version = version
    row.sha256 = hashlib.sha256(data).hexdigest()
    row.size_bytes = len(data)
    row.rollout_percent = rollout_percent
    row.content = data
    row.published_at = utcnow()
    session.flush()
    return _target(row)


def unpublish_build(server_type: str, *, session: Session) -> None:
    """Stop offering the build of `server_type`; NotFound when none is published."""
    deleted = session.execute(delete(AgentBuild).where(AgentBuild.server_type == server_type))
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"no agent build is published for server type {server_type!r}")


def set_rollout(server_type: str, percent: int, *, session: Session) -> None:
    """Offer the published build of `server_type` to `percent` % of its instances."""
    if not 0 <= percent <= 100:
        raise ValidationFailed(f"rolloutPercent must be 0..100, got {percent}")
    changed = session.execute(
        update(AgentBuild)
        .where(AgentBuild.server_type == server_type)
        .values(rollout_percent=percent)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"no agent build is published for server type {server_type!r}")


_TARGET_COLUMNS = (
    AgentBuild.server_type,
    AgentBuild.version,
    AgentBuild.sha256,
    AgentBuild.size_bytes,
    AgentBuild.rollout_percent,
    AgentBuild.published_at,
)


def load_targets(conn: Connection) -> dict[str, BuildTarget]:
    """Every published build, by server type, without the bytes."""
    rows = conn.execute(select(*_TARGET_COLUMNS))
    return {row[0]: BuildTarget(*row) for row in rows}


def build_content(sha256: str, *, conn: Connection) -> bytes | None:
    """The bytes of a published build, by sha256."""
    return conn.scalar(select(AgentBuild.content).where(AgentBuild.sha256 == sha256).limit(1))


def build_of_type(server_type: str, *, conn: Connection) -> tuple[str, bytes] | None:
    """(sha256, bytes) of the build published for `server_type`."""
    row = conn.execute(
        select(AgentBuild.sha256, AgentBuild.content).where(AgentBuild.server_type == server_type)
    ).first()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True)
class BuildStatus:
    """A published build and how far its rollout got."""

    target: BuildTarget
    instances: int  # of the server type
    on_target: int  # registered with the build's version
    offered: int  # inside the rollout percentage and not on the build yet


def list_builds(*, session: Session) -> list[BuildStatus]:
    """Every published build, with its instances counted."""
    statuses = []
    for target in load_targets(session.connection()).values():
        rows = session.execute(
            select(Instance.instance_id, Instance.agent_version).where(
                Instance.server_type == target.server_type
            )
        ).all()
        on_target = sum(1 for _id, version in rows if version == target.version)
        offered = sum(1 for i, v in rows if offered_build(target, i, v) is not None)
        statuses.append(BuildStatus(target, len(rows), on_target, offered))
    return sorted(statuses, key=lambda s: s.target.server_type)


