"""The agent hot paths stay cheap: an unchanged heartbeat is one UPDATE, a poll one SELECT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from depman.core.clock import utcnow
from depman.core.inventory import Heartbeat, apply_heartbeat
from depman.core.policy import Policy
from depman.core.queue import poll_queue
from depman.server.cache.memos import InstanceMemos
from depman.store.migrate import upgrade
from depman.store.models import Instance
from depman.store.session import Database, open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'hot.db'}"
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


def statements(db: Database) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if not sql.startswith(("BEGIN", "PRAGMA")):
            seen.append(sql.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", record)
    return seen


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
