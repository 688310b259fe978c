"""Server-suite fixtures: one server per backend, shared by tests that use unique ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, postgres_database, run_replica, run_server

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="package", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A live server shared by the suite's tests (SQLite file, then a fresh PostgreSQL DB)."""
    tmp = tmp_path_factory.mktemp("shared")
    if request.param == "sqlite":
        with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp) as server:
            yield server
    else:
        with postgres_database() as url, run_server(url, cwd=tmp) as server:
            yield server


@pytest.fixture(params=BACKENDS)
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """A live server of this test's own, once on SQLite and once on PostgreSQL.

    `@pytest.mark.server_env(DEPMAN_RUNNING_TIMEOUT_SECONDS="1")` sets server env vars.
    """
    marker = request.node.get_closest_marker("server_env")
    extra = dict(marker.kwargs) if marker else {}
    if request.param == "sqlite":
        with run_server(f"sqlite:///{tmp_path / 'depman.db'}", extra_env=extra,
                        cwd=tmp_path) as server:
            yield server
    else:
        with postgres_database() as url, run_server(url, extra_env=extra, cwd=tmp_path) as server:
            yield server


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two server processes on one fresh PostgreSQL database, with the same secrets."""
    with (
        postgres_database() as url,
        run_server(url, cwd=tmp_path) as first,
        run_replica(first, cwd=tmp_path) as second,
    ):
        yield first, second
