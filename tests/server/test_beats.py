"""Batched heartbeats: applied only over the digest they were taken against, never waiting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from depman.core.clock import utcnow
from depman.server.cache.beats import BeatBuffer, PendingBeat, write_beats
from depman.store.migrate import upgrade
from depman.store.models import Instance
from depman.store.session import Database, open_database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    upgrade(database_url)
    database = open_database(database_url)
    now = utcnow()
    with database.session() as session:
        for name in ("a", "b", "c"):
            session.add(
                Instance(
                    instance_id=name,
                    server_type="t",
                    created_at=now,
                    last_heartbeat_at=now - timedelta(seconds=30),
                    inventory_digest="d1",
                    disk_free_bytes=1,
                    downloading_dep_ids=[],
                    failed_dep_ids=[],
                    active_downloads=[],
                    pinned_dep_ids=[],
                )
            )
        session.commit()
    yield database
    database.dispose()


def row(db: Database, instance_id: str) -> Instance:
    with db.read_session() as session:
        found = session.scalar(select(Instance).where(Instance.instance_id == instance_id))
        assert found is not None
        return found


def test_a_batch_applies_only_over_the_same_digest_and_never_backwards(db: Database) -> None:
    now = utcnow()
    beats = {
        "a": PendingBeat(at=now, digest="d1"),
        "b": PendingBeat(at=now, digest="other"),  # the inventory changed meanwhile
        "c": PendingBeat(at=now - timedelta(seconds=60), digest="d1"),  # older than stored
    }
    with db.session() as session:
        outcome = write_beats(beats, session=session)
        session.commit()
    assert outcome.refused == {"b", "c"} and outcome.skipped == {}
    a = row(db, "a")
    assert a.last_heartbeat_at == now and a.disk_free_bytes == 1  # figures are not its to write
    assert row(db, "b").last_heartbeat_at < now  # type: ignore[operator]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_locked_row_is_skipped_and_kept_for_the_next_batch(db: Database) -> None:
    now = utcnow()
    buffer = BeatBuffer()
    with db.session() as holder:  # e.g. a placement holding the row
        holder.execute(text("SELECT 1 FROM instances WHERE instance_id = 'a' FOR UPDATE"))
        with db.session() as session:
            outcome = write_beats(
                {"a": PendingBeat(at=now, digest="d1"), "b": PendingBeat(at=now, digest="d1")},
                session=session,
            )
            session.commit()
        assert outcome.refused == set() and set(outcome.skipped) == {"a"}
        holder.commit()
    buffer.restore(outcome.skipped)
    with db.session() as session:
        outcome = write_beats(buffer.take(), session=session)
        session.commit()
    assert outcome.refused == set() and outcome.skipped == {}
    assert row(db, "a").last_heartbeat_at == now
    # A row that is gone gives its beat up once it is too old to matter.
    with db.session() as session:
        old = PendingBeat(at=now - timedelta(seconds=30), digest="d1")
        outcome = write_beats({"gone": old}, session=session)
    assert outcome.refused == {"gone"} and outcome.skipped == {}


def test_the_buffer_keeps_the_latest_beat_per_instance() -> None:
    buffer = BeatBuffer()
    now = utcnow()
    buffer.add("a", PendingBeat(at=now, digest="x"))
    buffer.add("a", PendingBeat(at=now + timedelta(seconds=1), digest="y"))
    buffer.restore({"a": PendingBeat(at=now, digest="x"), "b": PendingBeat(at=now, digest="z")})
    taken = buffer.take()
    assert taken["a"].digest == "y" and taken["b"].digest == "z" and len(buffer) == 0
