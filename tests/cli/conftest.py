"""Fixtures of the CLI tests: `server` is shared by a module's tests, which only add documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import EXAMPLE, run_cli
from tests.support.server import RunningServer, server_on, start_own_server, wants_own_server


@pytest.fixture(scope="module")
def _shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A live server on SQLite shared by a module (a server start costs seconds)."""
    with server_on("sqlite", tmp_path_factory.mktemp("depman")) as server:
        yield server


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """The module's shared server; a server of the test's own if it is marked `own_server`
    or `server_env` (see tests/conftest.py)."""
    if wants_own_server(request):
        with start_own_server(request, "sqlite", tmp_path) as server:
            yield server
    else:
        yield request.getfixturevalue("_shared_server")


@pytest.fixture(scope="module")
def applied(_shared_server: RunningServer) -> RunningServer:
    """The shared server, holding the example fleet."""
    result = run_cli(_shared_server, "apply", "-f", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    return _shared_server
