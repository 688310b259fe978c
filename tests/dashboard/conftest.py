"""An app with only the dashboard mounted, on a SQLite file holding a seeded fleet."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from depman.core.policy import Policy
from depman.server.dashboard import mount
from depman.server.state import ServerState
from depman.settings import ServerSettings
from depman.store.models import Base
from depman.store.session import READ_ONLY_OPTION, Database, create_db_engine
from tests.dashboard.fleet_data import seed_fleet

ADMIN_TOKEN = "adm-dashboard-test-token"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh SQLite file with the tables created."""
    eng = create_db_engine(f"sqlite:///{tmp_path / 'dash.db'}", pool_size=2)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def any_engine(database_url: str) -> Iterator[Engine]:
    """Like `engine`, once on SQLite and once on the local PostgreSQL."""
    eng = create_db_engine(database_url, pool_size=2)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def now() -> datetime:
    """The moment the fleet was seeded."""
    return datetime.now(UTC)


@pytest.fixture
def any_seeded(any_engine: Engine, now: datetime) -> Engine:
    """`any_engine` with the sample fleet in it."""
    with Session(any_engine) as session:
        seed_fleet(session, now)
    return any_engine


@pytest.fixture
def seeded(engine: Engine, now: datetime) -> Engine:
    """The engine, with the sample fleet in it."""
    with Session(engine) as session:
        seed_fleet(session, now)
    return engine


def make_app(engine: Engine, admin_token: str | None = ADMIN_TOKEN) -> FastAPI:
    """A bare FastAPI app with only the dashboard, over the server's own state and sessions.

    No lifespan, so no maintenance loop rewrites the seeded rows under the test.
    """
    settings = ServerSettings(
        admin_token=admin_token, heartbeat_seconds=30, database_url=str(engine.url)
    )
    app = FastAPI()
    app.state.depman = ServerState(
        settings=settings, db=_database(engine), policy=Policy.from_settings(settings)
    )
    mount(app)
    return app


def _database(engine: Engine) -> Database:
    read_engine = engine.execution_options(**{READ_ONLY_OPTION: True})
    return Database(
        engine=engine,
        writer=sessionmaker(engine, expire_on_commit=False),
        reader=sessionmaker(read_engine, expire_on_commit=False),
    )


@pytest.fixture
def client(seeded: Engine) -> Iterator[TestClient]:
    """An anonymous client of the dashboard-only app."""
    with TestClient(make_app(seeded), follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def authed(client: TestClient) -> TestClient:
    """The same client, logged in."""
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"})
    assert resp.status_code == 303
    return client
