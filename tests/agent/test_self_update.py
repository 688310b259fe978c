"""Self-update end to end: a real zipapp agent, a real server, builds published with the CLI.

publish → agentUpdate → download and sha256 check → swap → re-exec → registers as the
new version; a build whose bytes do not match its sha256 is refused once and for
all; a build that exits at once, or never registers, is rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from depman.agent import protocol as p
from depman.agent.bundle import bundle_bytes
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, instance, setup_fleet
from tests.cli.helpers import run_cli
from tests.support.agent_builds import pyz_with, sha256_hex
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

NEW = "depman-agent/99.1.0"
STARTED_RE = re.compile(r"Starting (\S+) \(pid (\d+)\)")


def install_zipapp(tmp_path: Path) -> tuple[Path, bytes]:
    """The agent as deployed: depman-agent.pyz in a folder of its own."""
    data = bundle_bytes()
    path = tmp_path / "bin" / "depman-agent.pyz"
    path.parent.mkdir()
    path.write_bytes(data)
    path.chmod(0o755)
    return path, data


def publish(server: Any, tmp_path: Path, data: bytes, *args: str) -> None:
    build = tmp_path / f"build-{sha256_hex(data)[:8]}.pyz"
    build.write_bytes(data)
    result = run_cli(server, "agent", "publish", str(build), "--server-type", "st", *args)
    assert result.exit_code == 0, result.output
    assert sha256_hex(data) in result.output


def refused(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "ws" / (p.STATE_FILENAME + ".update-refused.json")
    return json.loads(path.read_text()) if path.exists() else {}


def marker(tmp_path: Path) -> Path:
    return tmp_path / "ws" / (p.STATE_FILENAME + ".update-pending.json")


def agent_version(server: Any) -> str | None:
    return instance(server).get("agentVersion")


def heartbeats_seen(server: Any, count: int) -> None:
    """Wait until the server has taken `count` more heartbeats of i1."""
    for _ in range(count):
        last = instance(server).get("lastHeartbeatAt")
        assert wait_until(lambda last=last: instance(server).get("lastHeartbeatAt") != last, 30)


def stop_pid(pid: int) -> None:
    """Stop an agent the test did not start itself (the one a watchdog started)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    if not wait_until(gone, 20):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_agent_updates_itself_and_registers_as_the_new_version(
    fresh_server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(fresh_server, {}, [])
    env = agent_env(fresh_server, tmp_path, DM_HEARTBEAT_SECONDS="1")
    with AgentProcess(env, bundle=pyz) as agent:
        agent.wait_for_line("Registered dependency agent")
        assert agent_version(fresh_server) == p.AGENT_VERSION
        new = pyz_with(NEW)
        publish(fresh_server, tmp_path, new)
        assert wait_until(lambda: agent_version(fresh_server) == NEW, 60), agent.log()
        agent.wait_for_line("confirmed: registered")
        assert agent.proc is not None and agent.proc.poll() is None  # same process, re-executed
        starts = STARTED_RE.findall(agent.log())
        assert [v for v, _pid in starts] == [p.AGENT_VERSION, NEW]
        assert {int(pid) for _v, pid in starts} == {agent.proc.pid}
        assert pyz.read_bytes() == new
        assert pyz.with_name(pyz.name + ".previous").read_bytes() == old
        assert not marker(tmp_path).exists()
        # Registered on the target version, it is offered nothing more.
        heartbeats_seen(fresh_server, 2)
        assert agent.log().count("offered: downloading") == 1
        assert agent.stop() == 0


def test_a_build_whose_bytes_do_not_match_its_sha256_is_refused_for_good(
    fresh_server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(fresh_server, {}, [])
    good = pyz_with(NEW)
    publish(fresh_server, tmp_path, good)
    # The stored bytes change under the published sha256 (a corrupted store or mirror).
    db_path = fresh_server.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE agent_builds SET content = ?", (pyz_with("depman-agent/6.6.6"),))
    env = agent_env(fresh_server, tmp_path, DM_HEARTBEAT_SECONDS="1")
    with AgentProcess(env, bundle=pyz) as agent:
        line = agent.wait_for_line(r"Refusing agent build .*sha256 mismatch.*")
        assert sha256_hex(good) in line.group(0)
        assert set(refused(tmp_path)) == {sha256_hex(good)}
        heartbeats_seen(fresh_server, 3)  # offered again each time: not fetched again
        log = agent.log()
        assert log.count("offered: downloading") == 1 and log.count("Refusing") == 1
        assert pyz.read_bytes() == old
        assert agent_version(fresh_server) == p.AGENT_VERSION
        assert not list(pyz.parent.glob("*.download")) and not marker(tmp_path).exists()
        assert agent.stop() == 0
    # A restart remembers the refusal.
    with AgentProcess(env, bundle=pyz) as agent:
        agent.wait_for_line("refused earlier: sha256 mismatch")
        assert "offered: downloading" not in agent.log()


@pytest.mark.parametrize(
    ("main", "why"),
    [
        ("raise SystemExit(3)\n", "it exited before registering"),
        ("import time\ntime.sleep(600)\n", "it did not register within 2 s"),
    ],
    ids=["exits-at-once", "never-registers"],
)
def test_a_new_build_that_does_not_register_is_rolled_back(
    fresh_server: Any, tmp_path: Path, main: str, why: str
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(fresh_server, {}, [])
    env = agent_env(
        fresh_server, tmp_path, DM_HEARTBEAT_SECONDS="1", DM_UPDATE_PROBATION_SECONDS="2"
    )
    bad = pyz_with("depman-agent/66.0.0", main=main)
    with AgentProcess(env, bundle=pyz) as agent:
        try:
            agent.wait_for_line("Registered dependency agent")
            publish(fresh_server, tmp_path, bad)
            assert agent.proc is not None
            agent.proc.wait(60)  # the bad build ends the original process
            assert wait_until(lambda: len(STARTED_RE.findall(agent.log())) >= 2, 60), agent.log()
            assert f"failed: {why}. Rolling back" in agent.log()
            assert wait_until(
                lambda: "refused earlier: rolled back" in agent.log(), 30
            ), agent.log()
            assert pyz.read_bytes() == old
            assert set(refused(tmp_path)) == {sha256_hex(bad)}
            assert not marker(tmp_path).exists()
            assert agent_version(fresh_server) == p.AGENT_VERSION
            heartbeats_seen(fresh_server, 2)  # the previous build runs on, no second try
            assert agent.log().count("offered: downloading") == 1
        finally:  # the previous build the watchdog started is not the test's child
            for _version, pid in STARTED_RE.findall(agent.log()):
                if agent.proc is None or int(pid) != agent.proc.pid:
                    stop_pid(int(pid))


def test_an_agent_run_from_source_or_with_self_update_off_keeps_running(
    fresh_server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(fresh_server, {}, [])
    publish(fresh_server, tmp_path, pyz_with(NEW))
    env = agent_env(fresh_server, tmp_path, DM_HEARTBEAT_SECONDS="1")
    with AgentProcess(env) as agent:  # python -m depman.agent: nothing of its own to replace
        agent.wait_for_line("runs from an installed package, not depman-agent.pyz")
        heartbeats_seen(fresh_server, 2)
        assert agent.log().count("runs from an installed package") == 1
        assert agent_version(fresh_server) == p.AGENT_VERSION
        assert agent.stop() == 0
    with AgentProcess({**env, "DM_SELF_UPDATE": "off"}, bundle=pyz) as agent:
        agent.wait_for_line(r"not installing it \(DM_SELF_UPDATE is off\)")
        heartbeats_seen(fresh_server, 2)
        assert pyz.read_bytes() == old and "downloading" not in agent.log()
        assert agent.stop() == 0


def test_under_a_restart_loop_a_rollback_leaves_one_agent_running(
    fresh_server: Any, tmp_path: Path
) -> None:
    """`depman onstart` restarts an agent that exits; the watchdog restarts it too."""
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(fresh_server, {}, [])
    env = {
        "PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", "PY": sys.executable,
        "PYZ": str(pyz),
        **agent_env(fresh_server, tmp_path, DM_HEARTBEAT_SECONDS="1",
                    DM_UPDATE_PROBATION_SECONDS="2"),
    }
    log_path = tmp_path / "agent.log"
    loop = 'while :; do "$PY" -I -S "$PYZ"; sleep 1; done'
    with log_path.open("w") as log_file:
        supervisor = subprocess.Popen(["bash", "-c", loop], env=env, stdout=log_file,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def log() -> str:
            return log_path.read_text()

        assert wait_until(lambda: "Registered dependency agent" in log(), 30), log()
        bad = pyz_with("depman-agent/66.1.0", main="raise SystemExit(3)\n")
        publish(fresh_server, tmp_path, bad)
        assert wait_until(lambda: "waiting until it stops" in log(), 60), log()
        assert wait_until(lambda: log().count("Registered dependency agent") == 2, 30), log()
        heartbeats_seen(fresh_server, 3)
        text = log()
        assert text.count("Registered dependency agent") == 2  # one agent runs, one waits
        assert text.count("waiting until it stops") == 1 and "Rolling back" in text
        assert pyz.read_bytes() == old
        assert agent_version(fresh_server) == p.AGENT_VERSION
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
