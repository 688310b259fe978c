"""Running the CLI in-process and acting as a v1 agent, for the CLI tests."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from depman.cli import app
from tests.support.server import RunningServer

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "fleet.example.yaml"
GIB = 1024**3


def run_cli(server: RunningServer | None, *args: str, token: str | None = None) -> Result:
    """`depman ARGS` in-process, with the server's URL and admin token in the environment."""
    env = {}
    if server is not None:
        env = {"DEPMAN_URL": server.root_url, "DEPMAN_ADMIN_TOKEN": token or server.admin_token}
    return CliRunner().invoke(app, list(args), env=env)


def assert_clean_failure(result: Result, *messages: str) -> None:
    """Exit 1 with an `error:` message on stderr, not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: "), result.stderr
    for message in messages:
        assert message in result.stderr


def row_of(text: str, needle: str) -> str:
    """The first line of a printed table that contains `needle`."""
    return next(line for line in text.splitlines() if needle in line)


def write_fleet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def register(server: RunningServer, instance_id: str, server_type: str) -> str:
    """Register as a v1 agent; answers the agent token."""
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": server_type, "agentVersion": "test", "instanceId": instance_id},
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, body
    return str(body["agentToken"])


def heartbeat(
    server: RunningServer,
    token: str,
    instance_id: str,
    *,
    static: Sequence[str] = (),
    dynamic: Sequence[str] = (),
) -> None:
    """A v1 heartbeat: 500 GiB disk with 120 GiB used, 2 GiB of dynamic deps."""
    body: dict[str, Any] = {
        "instanceId": instance_id,
        "installedStaticDepIds": list(static),
        "installedDynamicDepIds": list(dynamic),
        "downloadingDepIds": [],
        "failedDepIds": [],
        "diskStats": {"totalBytes": 500 * GIB, "freeBytes": 380 * GIB, "usedBytes": 120 * GIB},
        "dynamicBytesUsed": 2 * GIB,
        "queueDepth": 0,
    }
    status, answer = server.request(
        "POST", "/api/dependencies/heartbeat", body, {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, answer
