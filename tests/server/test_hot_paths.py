"""The hot paths stay cheap: an unchanged heartbeat is one UPDATE, a poll one SELECT, a
succeeded report reads nothing back, a submit reads the fleet in three statements."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from depman.core import lost
from depman.core.chunks import chunks
from depman.core.clock import utcnow
from depman.core.inventory import Heartbeat, apply_heartbeat
from depman.core.lost import sweep_lost_instances
from depman.core.policy import Policy
from depman.core.queue import poll_queue
from depman.core.reports import FIGURES, StatusReport, apply_status, record_figures
from depman.core.scheduler import submit_job
from depman.server.cache.memos import InstanceMemos
from depman.store.migrate import upgrade
from depman.store.models import Dep, Instance, Job, ServerType
from depman.store.session import Database, open_database


def _hot_instance_db(url: str) -> Iterator[Database]:
    upgrade(url)
    database = open_database(url)
    with database.session() as session:
        session.add(
            Instance(
                instance_id="hot",
                server_type="t",
                created_at=utcnow(),
                downloading_dep_ids=[],
                failed_dep_ids=[],
                active_downloads=[],
                pinned_dep_ids=[],
            )
        )
        session.commit()
    yield database
    database.dispose()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from _hot_instance_db(f"sqlite:///{tmp_path / 'hot.db'}")


@pytest.fixture
def any_db(database_url: str) -> Iterator[Database]:
    """The same, on each backend."""
    yield from _hot_instance_db(database_url)


def statements(db: Database) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if not sql.startswith(("BEGIN", "PRAGMA")):
            seen.append(sql.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", record)
    return seen


def make_hot_live_with_a_lora(db: Database) -> None:
    """Server type `t` (one job per instance), the 1000-byte dynamic dep `lora`, and the
    instance `hot` live with 5 bytes free."""
    now = utcnow()
    with db.session() as session:
        session.add(
            ServerType(
                server_type="t", mode="dependency_manager_v1", max_active_jobs=1, updated_at=now
            )
        )
        session.add(
            Dep(
                dep_id="lora",
                url="https://hf.co/x",
                auth="none",
                dest_relative_path="models/loras/lora.safetensors",
                expected_size_bytes=1000,
                kind="dynamic",
                created_at=now,
                updated_at=now,
            )
        )
        row = session.get(Instance, "hot")
        assert row is not None
        row.last_heartbeat_at = now
        row.disk_free_bytes = 5
        session.commit()


def test_unchanged_heartbeat_is_one_update(db: Database) -> None:
    hb = Heartbeat(installed_dynamic=[f"dep-{i}" for i in range(200)], disk_free_bytes=5)
    with db.session() as session:
        apply_heartbeat("hot", hb, session=session, policy=Policy())
        session.commit()
    seen = statements(db)
    with db.session() as session:
        result = apply_heartbeat("hot", hb, session=session, policy=Policy())
        session.commit()
    assert seen == ["UPDATE"]
    assert result.changed is False


def test_poll_is_one_select(db: Database) -> None:
    seen = statements(db)
    with db.read_session() as session:
        poll = poll_queue("hot", 25, conn=session.connection())
    assert poll.found and poll.items == []
    assert seen == ["SELECT"]


def test_poll_hint_is_not_set_by_a_read_that_raced_an_enqueue() -> None:
    hints = InstanceMemos()
    seen = hints.epoch("a")  # a poll starts, reads the database: empty
    hints.forget(["a"])  # meanwhile an enqueue commits
    hints.remember_empty("a", b"{}", seen)
    assert hints.empty_answer("a") is None
    hints.remember_empty("a", b"{}", hints.epoch("a"))
    assert hints.empty_answer("a") == b"{}"
    hints.forget(["a"])
    assert hints.empty_answer("a") is None


def test_poll_hints_are_off_while_the_listener_is_down() -> None:
    hints = InstanceMemos()
    hints.remember_empty("a", b"{}", hints.epoch("a"))
    seen = hints.epoch("b")
    hints.set_enabled(False)
    assert hints.empty_answer("a") is None
    hints.remember_empty("a", b"{}", hints.epoch("a"))
    assert hints.empty_answer("a") is None
    hints.set_enabled(True)
    hints.remember_empty("b", b"{}", seen)  # began before the listener came back
    assert hints.empty_answer("b") is None


def test_a_succeeded_report_reads_nothing_back(any_db: Database) -> None:
    """A field agent's `succeeded` for its job's dep, restating the disk figures: lock the
    instance (reading its figures), move the item (on PostgreSQL reading the dep's size
    too), its bytes to the instance and to the job, the waiting job and its deps'
    standing. Six statements on PostgreSQL, seven on SQLite; the job waits for a heartbeat
    to list the file (no receipt)."""
    db = any_db
    make_hot_live_with_a_lora(db)
    policy = Policy()
    with db.session() as session:
        submitted = submit_job("t", ["lora"], session=session, policy=policy)
        session.commit()
    assert submitted.missing_dep_ids == ["lora"]
    report = StatusReport(item_id="lora.1", state="succeeded", disk_free_bytes=5)
    seen = statements(db)
    with db.session() as session:
        result = apply_status("hot", report, session=session, policy=policy)
        session.commit()
    assert result.applied
    dep_size = [] if db.dialect == "postgresql" else ["SELECT"]
    assert seen == ["SELECT", "UPDATE", *dep_size, "UPDATE", "UPDATE", "SELECT", "SELECT"]
    with db.read_session() as session:
        job = session.get(Job, submitted.job.job_id)
        assert job is not None and job.state == "waiting_deps" and job.upstream_bytes == 1000


def test_a_submit_reads_the_fleet_in_three_statements(any_db: Database) -> None:
    """A job of one dep the only live instance lacks: the type with the dep, the
    instances with open downloads, the ranked candidates; then the chosen row locked
    and its jobs counted, the download queued, the pin, the job and its deps written.
    Nine statements, whatever the fleet's size."""
    db = any_db
    make_hot_live_with_a_lora(db)
    seen = statements(db)
    with db.session() as session:
        submitted = submit_job("t", ["lora"], session=session, policy=Policy())
        session.commit()
    assert submitted.job.instance_id == "hot" and submitted.missing_dep_ids == ["lora"]
    assert seen == [
        "SELECT", "SELECT", "SELECT", "SELECT", "SELECT", "INSERT", "UPDATE", "INSERT", "INSERT"
    ]


def test_a_report_sends_its_figures_only_when_the_locked_row_differs(db: Database) -> None:
    with db.session() as session:
        row = session.get(Instance, "hot")
        assert row is not None
        row.disk_free_bytes = 5
        session.commit()
    stored = [5 if name == "disk_free_bytes" else None for name in FIGURES]
    seen = statements(db)
    for free in (5, None, 9):
        report = StatusReport(item_id="lora.1", state="succeeded", disk_free_bytes=free)
        with db.session() as session:
            record_figures("hot", report, conn=session.connection(), stored=stored)
            session.commit()
    assert seen == ["UPDATE"]  # only the 9
    with db.read_session() as session:
        row = session.get(Instance, "hot")
        assert row is not None and row.disk_free_bytes == 9


def test_a_wide_silence_is_lost_in_statements_that_do_not_grow_with_it(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lost instance without jobs costs no statement of its own: its queue is cancelled
    # and its jobs looked up for all of them at once, and its row is one more of the
    # batched UPDATE. Under load every statement holds the silent rows locked longer.
    seen = statements(any_db)

    def lose(count: int) -> list[str]:
        long_ago = utcnow() - timedelta(hours=1)
        ids = [f"silent-{len(seen)}-{i}" for i in range(count)]
        with any_db.session() as session:
            session.add_all(
                Instance(
                    instance_id=instance_id,
                    server_type="t",
                    agent_token_hash=f"hash-{instance_id}",
                    registered_at=long_ago,
                    last_heartbeat_at=long_ago,
                    created_at=long_ago,
                    downloading_dep_ids=[],
                    failed_dep_ids=[],
                    active_downloads=[],
                    pinned_dep_ids=["some-dep"],
                )
                for instance_id in ids
            )
            session.commit()
        mark = len(seen)
        with any_db.session() as session:
            lost = sweep_lost_instances(session=session, policy=Policy(), now=utcnow()).lost
            session.commit()
        sent = seen[mark:]
        assert sorted(lost) == sorted(ids)
        with any_db.session() as session:
            rows = session.scalars(select(Instance).where(Instance.instance_id.in_(ids))).all()
            assert all(r.lost_at and r.agent_token_hash is None and r.pinned_dep_ids == []
                       for r in rows)
        return sent

    # The silent rows, the fleet's quiet share (40 of 40 is a wide silence, but an hour
    # is past any wait), their queues and jobs, their rows.
    few, many = lose(2), lose(40)
    assert many == few == ["SELECT", "SELECT", "UPDATE", "SELECT", "UPDATE"]
    # Past the ids one statement takes, the silence is taken a slice at a time.
    monkeypatch.setattr(lost, "chunks", lambda values: chunks(values, 16))
    assert lose(40) == ["SELECT", "SELECT", *["UPDATE", "SELECT"] * 3, "UPDATE"]
