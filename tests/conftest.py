"""Fixtures shared by every test: a clean environment, databases, live servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, postgres_database, start_own_server

BACKENDS = ["sqlite", "postgresql"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first, so parallel workers start on them rather than end on
    them (the order within each group is kept)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's DEPMAN_* / DM_* settings, secrets or terminal size."""
    for key in list(os.environ):
        if key.startswith(("DEPMAN_", "DM_")) and key != "DEPMAN_TEST_PG_URL":
            monkeypatch.delenv(key, raising=False)
    for key in (
        "DEPENDENCY_MANAGER_SHARED_SECRET",
        "HF_TOKEN",
        "CIVITAI_TOKEN",
        "FCS_API_BASE_URL",
        # The terminal's size reshapes the CLI's tables (pytest-xdist workers set 80x24).
        "COLUMNS",
        "LINES",
    ):
        monkeypatch.delenv(key, raising=False)


def _database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'depman.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    yield from _database_url(request.param, tmp_path)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """A live `depman server`: the one name tests and fixtures ask for it by.

    Here it is a server of the test's own, on a SQLite file. tests/server/ and tests/cli/
    share it instead, as a start costs seconds: one server per backend for the package
    (each test runs on SQLite and on PostgreSQL), and one per module. There
    `@pytest.mark.own_server` (`pytestmark = pytest.mark.own_server` for a module) gives a
    test a server of its own, for a test whose server-wide state (audit log, counters,
    fixed ids) others must not see. `@pytest.mark.server_env(DEPMAN_RUNNING_TIMEOUT_SECONDS="1")`
    sets the server's env vars, which only a server started for the test can take, so it
    implies `own_server`. A module whose tests need a differently configured server (fake
    hubs, a mirror) overrides `server` with a module-scoped fixture.
    """
    with start_own_server(request, "sqlite", tmp_path) as server:
        yield server
