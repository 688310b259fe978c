"""What a write changes for this replica's memos and waiters, table by table.

One rule per table, read from what a statement or a flushed object wrote: its
table, its key (the instance or job it is about, when the write names one), the
columns it set and their values. A write the rules cannot key drops more, never
less; a table they do not know drops everything, so a new table is covered
before anyone thinks of it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depman.core.inventory import SCALAR_COLUMNS
from depman.core.states import ItemState, JobState
from depman.server.cache.notify import Notice

# instances: written by every heartbeat, read by no memo (a beat memo keeps its own live time).
LIVENESS_COLUMNS = frozenset({"last_heartbeat_at"})
# instances: what a heartbeat restates; only the heartbeat memo holds them.
BEAT_COLUMNS = frozenset(
    {
        "downloading_dep_ids",
        "failed_dep_ids",
        "active_downloads",
        "disk_stats_path",
        "disk_diagnostics",
        *SCALAR_COLUMNS,
    }
)
# queue_items: a heartbeat listing running downloads; polls hand out queued items only.
PROGRESS_COLUMNS = frozenset({"last_progress_at"})
INSTANCE_TABLES = frozenset({"instances", "queue_items", "instance_deps", "dep_receipts"})
JOB_TABLES = frozenset({"jobs", "job_deps"})
# What every heartbeat answer is built from (static deps, pins named by the catalog).
CATALOG_TABLES = frozenset({"deps", "profiles", "profile_static_deps", "server_types"})
# Read by no agent answer and no waiter.
UNWATCHED_TABLES = frozenset(
    {"operator_actions", "revoked_sessions", "periodic_runs", "alembic_version"}
)
KEY_COLUMNS = {name: "instance_id" for name in INSTANCE_TABLES} | {
    name: "job_id" for name in JOB_TABLES
}


@dataclass
class Changes:
    """What committed writes made stale: memos to drop, waiters to wake."""

    instances: set[str] = field(default_factory=set)  # every memo of these instances
    beats: set[str] = field(default_factory=set)  # only their heartbeat memos
    tokens: set[str] = field(default_factory=set)  # their memo'd token hashes
    queued: set[str] = field(default_factory=set)  # items may be queued: wake their polls
    jobs: set[str] = field(default_factory=set)  # wake the waiters of these jobs
    pending_types: set[str] = field(default_factory=set)  # a job of the type waits
    pending_unknown: bool = False  # a job waits, its type unread
    all_instances: bool = False  # every instance's memos (not tokens); wake every poll
    all_jobs: bool = False
    all_beats: bool = False
    builds: bool = False
    everything: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.instances
            or self.beats
            or self.tokens
            or self.queued
            or self.jobs
            or self.pending_types
            or self.pending_unknown
            or self.all_instances
            or self.all_jobs
            or self.all_beats
            or self.builds
            or self.everything
        )

    def notices(self) -> list[tuple[Notice, str]]:
        """The changes other replicas apply."""
        out: list[tuple[Notice, str]] = [
            (Notice.PENDING, server_type) for server_type in sorted(self.pending_types)
        ]
        if self.pending_unknown:
            out.append((Notice.PENDING, ""))
        if self.everything:
            return [*out, (Notice.EVERYTHING, "")]
        for flag, notice in (
            (self.all_instances, Notice.ALL_INSTANCES),
            (self.all_jobs, Notice.ALL_JOBS),
            (self.builds, Notice.BUILDS),
            (self.all_beats and not self.builds, Notice.ALL_BEATS),
        ):
            if flag:
                out.append((notice, ""))
        for keys, notice in (
            (self.queued, Notice.QUEUED),
            (self.instances - self.queued, Notice.INSTANCE),
            (self.beats - self.instances - self.queued, Notice.BEAT),
            (self.tokens, Notice.TOKEN),
            (self.jobs, Notice.JOB),
        ):
            out.extend((notice, key) for key in sorted(keys))
        return out

    def add_notice(self, notice: Notice, key: str) -> None:
        """Take one change another replica sent."""
        if notice is Notice.EVERYTHING:
            self.everything = True
        elif notice is Notice.ALL_INSTANCES:
            self.all_instances = True
        elif notice is Notice.ALL_JOBS:
            self.all_jobs = True
        elif notice is Notice.BUILDS:
            self.builds = True
        elif notice is Notice.ALL_BEATS:
            self.all_beats = True
        elif notice is Notice.PENDING:
            if key:
                self.pending_types.add(key)
            else:
                self.pending_unknown = True
        elif key:
            {
                Notice.QUEUED: self.queued,
                Notice.INSTANCE: self.instances,
                Notice.BEAT: self.beats,
                Notice.TOKEN: self.tokens,
                Notice.JOB: self.jobs,
            }[notice].add(key)


def record_write(
    changes: Changes,
    table: str,
    *,
    op: str,
    keys: Iterable[Any] | None,
    columns: Collection[str] | None,
    rows: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Add what one write did: `op` insert/update/delete on `table`, about `keys` (None:
    unknown rows), setting `columns` (None: whole rows), with `rows` of written values."""
    if table in UNWATCHED_TABLES:
        return

    if table == "agent_builds":
        changes.builds = True
        return
    if table in CATALOG_TABLES:
        changes.all_beats = True
        return
    if table == "instances":
        _instances(changes, op, keys, columns)
    elif table == "queue_items":
        _queue_items(changes, op, keys, columns, rows)
    elif table in ("instance_deps", "dep_receipts"):
        if keys is None:
            changes.all_instances = True
        else:
            changes.instances.update(map(str, keys))
    elif table in JOB_TABLES:
        if keys is None:
            changes.all_jobs = True
        else:
            changes.jobs.update(map(str, keys))
        if table == "jobs":
            _pending(changes, op, columns, rows)
    else:
        changes.everything = True


def _instances(
    changes: Changes, op: str, keys: Iterable[Any] | None, columns: Collection[str] | None
) -> None:
    written = None if op != "update" or columns is None else set(columns) - LIVENESS_COLUMNS
    if written is not None and not written:
        return
    if keys is None:
        if written is not None and written <= BEAT_COLUMNS:
            changes.all_beats = True
        else:
            changes.everything = True  # tokens included
        return
    ids = {str(key) for key in keys}
    if written is not None and written <= BEAT_COLUMNS:
        changes.beats |= ids
        return
    changes.instances |= ids
    if written is None or "agent_token_hash" in written:
        changes.tokens |= ids


def _queue_items(
    changes: Changes,
    op: str,
    keys: Iterable[Any] | None,
    columns: Collection[str] | None,
    rows: Sequence[Mapping[str, Any]],
) -> None:
    if op == "update" and columns is not None and not set(columns) - PROGRESS_COLUMNS:
        return
    # Polls hand out queued items only, and only an empty poll is memo'd: a write that
    # can leave no item queued (one going running, succeeded, failed, cancelled, or a
    # deletion) makes no memo stale and wakes no poll. The heartbeat memo reads no item.
    if op == "delete" or not (op == "insert" or _may_queue(columns, rows)):
        return
    if keys is None:
        changes.all_instances = True
        return
    changes.queued.update(map(str, keys))


def _may_queue(columns: Collection[str] | None, rows: Sequence[Mapping[str, Any]]) -> bool:
    if columns is None or "state" not in columns:
        return columns is None or bool(set(columns) - {"started_at", "finished_at", "updated_at"})
    return not rows or any(
        row.get("state", ItemState.QUEUED.value) == ItemState.QUEUED.value for row in rows
    )


def _pending(
    changes: Changes, op: str, columns: Collection[str] | None, rows: Sequence[Mapping[str, Any]]
) -> None:
    if op == "delete" or (columns is not None and "state" not in columns):
        return
    for row in rows or ({},):
        state = row.get("state")
        if state is not None and state != JobState.PENDING.value:
            continue
        server_type = row.get("server_type")
        if server_type is None:
            changes.pending_unknown = True
        else:
            changes.pending_types.add(str(server_type))
