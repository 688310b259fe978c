"""Server-suite fixtures: `server` is shared, one per backend, by tests that use unique ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import (
    RunningServer,
    postgres_database,
    run_replica,
    run_server,
    server_on,
    start_own_server,
    wants_own_server,
)

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="package", params=BACKENDS)
def server_backend(request: pytest.FixtureRequest) -> str:
    """The database under `server`, so each test that asks for it runs on both; package
    scope, as the shared server below depends on it. A test runs on one backend only with
    `@pytest.mark.parametrize("server_backend", ["sqlite"], indirect=True)`."""
    return str(request.param)


@pytest.fixture(scope="package")
def _shared_server(
    server_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One live server per backend, for the package's tests that use unique ids."""
    with server_on(server_backend, tmp_path_factory.mktemp("shared")) as server:
        yield server


@pytest.fixture
def server(
    request: pytest.FixtureRequest, server_backend: str, tmp_path: Path
) -> Iterator[RunningServer]:
    """The package's shared server; a server of the test's own if it is marked `own_server`
    or `server_env` (see tests/conftest.py). Either runs once on each backend."""
    if wants_own_server(request):
        with start_own_server(request, server_backend, tmp_path) as server:
            yield server
    else:
        yield request.getfixturevalue("_shared_server")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two server processes on one fresh PostgreSQL database, with the same secrets."""
    with (
        postgres_database() as url,
        run_server(url, cwd=tmp_path) as first,
        run_replica(first, cwd=tmp_path) as second,
    ):
        yield first, second
