"""Fixtures of the CLI tests: one server per module for tests that only add documents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.helpers import EXAMPLE, run_cli
from tests.support.server import RunningServer, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A live server on SQLite shared by a module (a server start costs seconds)."""
    tmp = tmp_path_factory.mktemp("depman")
    with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp) as server:
        yield server


@pytest.fixture(scope="module")
def applied(server: RunningServer) -> RunningServer:
    """The shared server, holding the example fleet."""
    result = run_cli(server, "apply", "-f", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    return server
