"""Engines and sessions: SQLite with WAL and immediate write transactions, or a PostgreSQL pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 15_000
# PostgreSQL: commit without waiting for the WAL flush. For writes the agent repeats
# within a heartbeat interval, where losing the last few on a crash is harmless.
ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
READ_ONLY_OPTION = "depman_read_only"


def is_sqlite(url: str) -> bool:
    """Whether a SQLAlchemy URL names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so the "begin" hook below decides.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads, then writes, fails with SQLITE_BUSY when
        # another writer committed in between (the busy timeout does not apply), so
        # writers take the lock up front; read-only sessions stay deferred.
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _quick_engine(url: str, pool_size: int) -> Engine:
    """PostgreSQL connections where each statement is its own transaction, committed
    asynchronously: one round trip per statement, no BEGIN and no COMMIT, no WAL flush wait.

    For agent reports the agent repeats or the next heartbeat restates: losing
    the last few hundred milliseconds of them in a crash is harmless, and at 10,000
    agents the BEGIN/COMMIT round trips cost the database more than the statements.
    """
    return _postgres_engine(
        url,
        pool_size,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c synchronous_commit=off"},
    )


def create_db_engine(url: str, *, pool_size: int = 20) -> Engine:
    """An engine for `url`: SQLite (WAL, busy timeout, foreign keys) or a PostgreSQL pool."""
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            hide_parameters=True,  # errors never carry request values into logs
        )
        _install_sqlite_pragmas(engine)
        return engine
    return _postgres_engine(url, pool_size)


def _postgres_engine(url: str, pool_size: int, **options: Any) -> Engine:
    # No overflow: connections opened past the pool are closed on return, and under a
    # boot storm that churn (a backend fork and login each) cost more than the queries.
    # No pre-ping: a round trip on every checkout; a dead connection is invalidated by
    # the error it raises (503, the agent retries), and recycling bounds idle ones.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        pool_recycle=1800,
        hide_parameters=True,  # errors never carry request values into logs
        **options,
    )


@dataclass
class Database:
    """An engine plus its write and read session factories, and quick connections."""

    engine: Engine
    writer: sessionmaker[Session]
    reader: sessionmaker[Session]
    # PostgreSQL: autocommit connections for one-statement agent reports (`quick()`).
    quick_engine: Engine | None = None

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session; the caller commits, anything uncommitted is rolled back."""
        with self.writer() as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only session (deferred transaction on SQLite), ended with COMMIT.

        Not ROLLBACK: psycopg forgets every prepared statement of a connection at a
        ROLLBACK, and reads ending that way kept the hot statements from ever being
        prepared (parsed and planned again on every execution).
        """
        with self.reader() as session:
            yield session
            session.commit()

    @contextmanager
    def quick(self, *, write: bool) -> Iterator[Connection]:
        """A Core connection for a request made of one or two independent statements.

        PostgreSQL: every statement commits on its own, asynchronously (see
        `_quick_engine`); use it only where each statement stands alone and losing the
        last ones in a crash is harmless. SQLite: one transaction (a write one when
        `write`), committed at the end.
        """
        if self.quick_engine is not None:
            with self.quick_engine.connect() as conn:
                yield conn
            return
        engine = self.engine if write else self.engine.execution_options(**{READ_ONLY_OPTION: True})
        with engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.quick_engine is not None:
            self.quick_engine.dispose()


def open_database(url: str, *, pool_size: int = 20) -> Database:
    """Build the engine and session factories for `url`."""
    engine = create_db_engine(url, pool_size=pool_size)
    read_engine = engine.execution_options(**{READ_ONLY_OPTION: True})
    quick = None if is_sqlite(url) else _quick_engine(url, max(4, pool_size // 2))
    return Database(
        engine=engine,
        writer=sessionmaker(engine, expire_on_commit=False),
        reader=sessionmaker(read_engine, expire_on_commit=False),
        quick_engine=quick,
    )
