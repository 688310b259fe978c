"""`depman agent publish|builds|rollout|unpublish` against a live server."""

from __future__ import annotations

from pathlib import Path

from tests.cli.helpers import assert_clean_failure, row_of, run_cli
from tests.support.agent_builds import pyz_with, sha256_hex
from tests.support.server import RunningServer


def server_type(server: RunningServer, name: str) -> str:
    status, body = server.admin(
        "PUT", f"/admin/server-types/{name}", {"modelManagement": {"mode": "dependency_manager_v1"}}
    )
    assert status == 200, body
    return name


def test_publish_list_rollout_unpublish(server: RunningServer, tmp_path: Path) -> None:
    stype = server_type(server, "cli-builds")
    data = pyz_with("depman-agent/5.0.0")
    build = tmp_path / "depman-agent.pyz"
    build.write_bytes(data)
    result = run_cli(
        server, "agent", "publish", str(build), "--server-type", stype,
        "--rollout-percent", "25",
    )
    assert result.exit_code == 0, result.output
    assert "version depman-agent/5.0.0" in result.output
    assert sha256_hex(data) in result.output and "rollout 25%" in result.output

    result = run_cli(server, "agent", "builds")
    assert result.exit_code == 0, result.output
    row = row_of(result.output, stype)
    assert "depman-agent/5.0.0" in row and sha256_hex(data)[:12] in row and "25%" in row

    result = run_cli(server, "agent", "rollout", stype, "60")
    assert result.exit_code == 0, result.output
    assert "60%" in row_of(run_cli(server, "agent", "builds").output, stype)

    result = run_cli(server, "agent", "unpublish", stype)
    assert result.exit_code == 0, result.output
    assert stype not in run_cli(server, "agent", "builds").output
    assert_clean_failure(run_cli(server, "agent", "unpublish", stype), "no agent build")


def test_bad_publishes_fail_cleanly(server: RunningServer, tmp_path: Path) -> None:
    stype = server_type(server, "cli-bad-builds")
    script = tmp_path / "agent.py"
    script.write_bytes(b"print('field agent')\n")
    assert_clean_failure(
        run_cli(server, "agent", "publish", str(script), "--server-type", stype),
        "--version",
    )
    assert_clean_failure(
        run_cli(server, "agent", "publish", str(tmp_path / "nope.pyz"), "--server-type",
                stype),
        "cannot read",
    )
    assert_clean_failure(
        run_cli(server, "agent", "publish", str(script), "--server-type", "no-such-type",
                "--version", "0.7.0"),
        "does not exist",
    )
    result = run_cli(
        server, "agent", "publish", str(script), "--server-type", stype,
        "--version", "0.7.0",
    )
    assert result.exit_code == 0, result.output
    result = run_cli(server, "agent", "rollout", stype, "101")
    assert result.exit_code == 2
