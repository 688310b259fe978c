"""What a committed write makes stale is read from the write itself (no mark on any path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from depman.core.clock import utcnow
from depman.core.inventory import (
    Heartbeat,
    inventory,
    inventory_digest,
    record_unchanged_heartbeat,
)
from depman.core.operator import retry_item
from depman.core.policy import Policy
from depman.core.queue import enqueue, poll_queue, wake_due_items
from depman.core.states import ItemState, Op
from depman.core.upstream import UpstreamGate
from depman.server.cache.changes import Changes
from depman.server.cache.invalidation import watch_writes
from depman.store.migrate import upgrade
from depman.store.models import Dep, Instance, QueueItem
from depman.store.session import Database, open_database
from depman.store.writes import declare_writes


@pytest.fixture
def watched(database_url: str) -> Iterator[tuple[Database, list[Changes]]]:
    upgrade(database_url)
    db = open_database(database_url)
    applied: list[Changes] = []
    watch_writes(
        db.engine, (db.writer, db.reader), applied.append, autocommit_engine=db.quick_engine
    )
    now = utcnow()
    with db.session() as session:
        for name in ("a", "b"):
            session.add(
                Instance(
                    instance_id=name,
                    server_type="t",
                    created_at=now,
                    downloading_dep_ids=[],
                    failed_dep_ids=[],
                    active_downloads=[],
                    pinned_dep_ids=[],
                )
            )
        session.add(
            Dep(
                dep_id="d",
                url="https://example.invalid/d",
                auth="none",
                dest_relative_path="models/d.bin",
                kind="dynamic",
                created_at=now,
                updated_at=now,
            )
        )
        session.commit()
    applied.clear()
    yield db, applied
    db.dispose()


def test_each_write_names_what_it_makes_stale(watched: tuple[Database, list[Changes]]) -> None:
    db, applied = watched
    now = utcnow()
    # Only the liveness time: no memo holds it.
    with db.session() as session:
        session.execute(
            update(Instance).where(Instance.instance_id == "a").values(last_heartbeat_at=now)
        )
        session.commit()
    assert applied == []
    # What a heartbeat restates, on the quick connection: that instance's heartbeat memo.
    with db.quick(write=True) as conn:
        conn.execute(
            update(Instance).where(Instance.instance_id.in_(["a"])).values(disk_free_bytes=5)
        )
    (changes,) = applied
    assert changes.beats == {"a"} and not changes.instances
    # A write that is rolled back changes nothing; one that matches no row neither.
    applied.clear()
    with db.session() as session:
        session.execute(update(Instance).where(Instance.instance_id == "a").values(drained=True))
        session.rollback()
        session.execute(update(Instance).where(Instance.instance_id == "zz").values(drained=True))
        session.commit()
    assert applied == []
    # An enqueue (INSERT … RETURNING): the instance's polls wake, its memos go.
    with db.session() as session:
        enqueue("b", "d", Op.DOWNLOAD, priority=1, session=session, now=now)
        session.commit()
    (changes,) = applied
    assert changes.queued == {"b"} and not changes.tokens
    # The ORM's unit of work: a new agent token, read from the flushed object.
    applied.clear()
    with db.session() as session:
        row = session.get(Instance, "a")
        assert row is not None
        row.agent_token_hash = "h"
        session.commit()
    (changes,) = applied
    assert changes.instances == {"a"} and changes.tokens == {"a"}
    # The same statement for another row: its own key (not the cached statement's).
    for name in ("a", "b"):
        applied.clear()
        with db.session() as session:
            session.execute(
                update(Instance).where(Instance.instance_id == name).values(drained=True)
            )
            session.commit()
        (changes,) = applied
        assert changes.instances == {name}, name
    # A flush that finds nothing to write, then a Core write: the write still counts.
    applied.clear()
    with db.session() as session:
        row = session.get(Instance, "b")
        assert row is not None
        row.pinned_dep_ids = list(row.pinned_dep_ids)  # marked, not changed
        session.flush()
        session.execute(
            update(Instance).where(Instance.instance_id == "b").values(pinned_dep_ids=["d"])
        )
        session.commit()
    assert applied and set().union(*(c.instances for c in applied)) == {"b"}
    # An operator's retry of an item backing off: only the queue item is written.
    applied.clear()
    with db.session() as session:
        session.execute(
            update(QueueItem)
            .where(QueueItem.instance_id == "b")
            .values(state=ItemState.FAILED.value)
        )
        session.commit()
        applied.clear()
        retry_item("b", "d", None, actor="t", session=session, now=now)
        session.commit()
    assert applied and set().union(*(c.queued for c in applied)) == {"b"}
    # Catalog rows: every heartbeat memo; hand-written SQL without its key: every instance.
    applied.clear()
    with db.session() as session:
        session.execute(update(Dep).where(Dep.dep_id == "d").values(expected_size_bytes=7))
        session.execute(
            declare_writes(text("UPDATE queue_items SET attempts = attempts + 1"), columns=None)
        )
        session.commit()
    (changes,) = applied
    assert changes.all_beats and changes.all_instances


def test_a_heartbeat_that_restates_the_row_writes_only_its_liveness(
    watched: tuple[Database, list[Changes]],
) -> None:
    """Heartbeats of one agent land on either replica. One that only restates what the
    row holds must leave the other replicas' heartbeat memos alone; one with a new
    figure, failed list or telemetry must drop them."""
    db, applied = watched
    beat = Heartbeat(installed_static=["d"], disk_free_bytes=100, disk_total_bytes=500,
                     failed=["x"], disk_diagnostics={"mount": "/", "ok": True})
    with db.session() as session:
        session.execute(
            update(Instance)
            .where(Instance.instance_id == "a")
            .values(inventory_digest=inventory_digest(inventory(beat)), last_heartbeat_at=utcnow())
        )
        session.commit()
    applied.clear()

    def send(hb: Heartbeat) -> set[str]:
        applied.clear()
        with db.quick(write=True) as conn:
            assert record_unchanged_heartbeat("a", hb, conn=conn, policy=Policy()) is not None
        return set().union(*(c.beats | c.instances for c in applied))

    assert send(beat) == {"a"}  # the figures are new to the row
    assert send(beat) == set()  # restated: the liveness time only
    # Omitted figures keep the stored ones, so the beat still restates the row.
    assert send(dataclasses.replace(beat, disk_total_bytes=None, disk_diagnostics=None)) == set()
    for changed in (
        dataclasses.replace(beat, disk_free_bytes=90),
        dataclasses.replace(beat, failed=[]),
        dataclasses.replace(beat, disk_diagnostics={"mount": "/", "ok": False}),
        dataclasses.replace(beat, disk_stats_path="/workspace"),
    ):
        assert send(changed) == {"a"}, changed
        assert send(changed) == set(), changed


def test_a_retry_coming_due_and_a_capped_poll_name_their_instance(
    watched: tuple[Database, list[Changes]],
) -> None:
    """A sweep waking an item that backed off, and a poll held at its upstream's cap,
    write queue items of one instance: only that instance's memos go. Written without
    naming it, each made every memo of the fleet stale, at every sweep while a download
    backs off and at every capped poll."""
    db, applied = watched
    now = utcnow()
    with db.session() as session:
        enqueue("b", "d", Op.DOWNLOAD, priority=1, session=session, now=now)
        session.execute(
            update(QueueItem)
            .where(QueueItem.instance_id == "b")
            .values(next_attempt_at=now - timedelta(seconds=1))
        )
        session.commit()
    applied.clear()
    with db.session() as session:
        assert wake_due_items(session=session, now=now) == 1
        session.commit()
    (changes,) = applied
    assert changes.queued == {"b"} and not changes.all_instances and not changes.everything
    # The upstream is at its cap (0 slots): the item is marked as waiting for it.
    applied.clear()
    gate = UpstreamGate(caps={"example.invalid": 0}, lease_seconds=600, begin=db.engine.begin)
    with db.read_session() as session:
        poll = poll_queue("b", 10, conn=session.connection(), gate=gate, now=now)
    assert poll.found and poll.items == [] and poll.waiting_upstream == 1
    assert applied and not any(c.all_instances or c.everything for c in applied)
    assert set().union(*(c.queued | c.instances for c in applied)) <= {"b"}
