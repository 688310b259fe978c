"""Self-update end to end: a real zipapp agent, a real server, builds published with the CLI.

publish → agentUpdate → download and sha256 check → swap → re-exec → registers as the
new version; a build whose bytes do not match its sha256 is refused, then fetched
again after a backoff and installed once the right bytes are served; the download
keeps to the allowed hosts, redirects included; a build that exits at once, or
never registers (also across a kill -9 during its probation), is rolled back.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from depman.agent import protocol as p
from depman.agent.bundle import bundle_bytes
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, instance, setup_fleet
from tests.cli.helpers import run_cli
from tests.support.agent_builds import pyz_with, sha256_hex
from tests.support.server import run_server
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
    server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1")
    with AgentProcess(env, bundle=pyz) as agent:
        agent.wait_for_line("Registered dependency agent")
        assert agent_version(server) == p.AGENT_VERSION
        new = pyz_with(NEW)
        publish(server, tmp_path, new)
        assert wait_until(lambda: agent_version(server) == NEW, 60), agent.log()
        agent.wait_for_line("confirmed: registered")
        assert agent.proc is not None and agent.proc.poll() is None  # same process, re-executed
        starts = STARTED_RE.findall(agent.log())
        assert [v for v, _pid in starts] == [p.AGENT_VERSION, NEW]
        assert {int(pid) for _v, pid in starts} == {agent.proc.pid}
        assert pyz.read_bytes() == new
        assert pyz.with_name(pyz.name + ".previous").read_bytes() == old
        assert not marker(tmp_path).exists()
        # Registered on the target version, it is offered nothing more.
        heartbeats_seen(server, 2)
        assert agent.log().count("offered: downloading") == 1
        assert agent.stop() == 0


def _set_served_bytes(server: Any, data: bytes) -> None:
    """Change the stored bytes under the published sha256 (a corrupted store, a portal)."""
    db_path = server.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE agent_builds SET content = ?", (data,))


def test_a_refused_download_is_fetched_again_and_installed_once_the_bytes_are_right(
    server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    good = pyz_with(NEW)
    publish(server, tmp_path, good)
    portal = b"<html><body>Sign in to the hotel Wi-Fi</body></html>"
    _set_served_bytes(server, portal)
    env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1",
                    DM_UPDATE_RETRY_SECONDS="1")
    with AgentProcess(env, bundle=pyz) as agent:
        line = agent.wait_for_line(r"ERROR Refusing agent build .*sha256 mismatch.*")
        assert sha256_hex(good) in line.group(0)
        entry = refused(tmp_path)[sha256_hex(good)]
        assert entry["received"] == sha256_hex(portal) and entry["retryAt"] > 0
        # After the backoff it is fetched again; the same page again is no new error.
        agent.wait_for_line(r"INFO Refusing agent build .*trying again in 2 s")
        assert agent.log().count("ERROR Refusing") == 1
        assert pyz.read_bytes() == old and not marker(tmp_path).exists()
        assert not list(pyz.parent.glob("*.download"))
        _set_served_bytes(server, good)  # the portal lets the agent through
        assert wait_until(lambda: agent_version(server) == NEW, 60), agent.log()
        agent.wait_for_line("confirmed: registered")
        assert pyz.read_bytes() == good
        assert sha256_hex(good) not in refused(tmp_path)
        assert agent.stop() == 0


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect to `target` + the same path."""

    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_update_download_keeps_to_the_allowed_hosts(tmp_path: Path) -> None:
    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    public = f"http://127.0.0.1:{redirector.server_address[1]}"
    try:
        with run_server(f"sqlite:///{tmp_path / 'depman.db'}", cwd=tmp_path,
                        extra_env={"DEPMAN_PUBLIC_URL": public}) as server:
            # The build is offered at the redirector, which sends agents to `localhost`.
            _Redirector.target = server.root_url.replace("127.0.0.1", "localhost")
            pyz, old = install_zipapp(tmp_path)
            setup_fleet(server, {}, [])
            publish(server, tmp_path, pyz_with(NEW))
            env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1",
                            DM_UPDATE_RETRY_SECONDS="1", DM_ALLOWED_DOMAINS="127.0.0.1")
            with AgentProcess(env, bundle=pyz) as agent:
                agent.wait_for_line(r"Agent update to \S+ failed: cannot download .*the host "
                                    r"'localhost' is neither the control plane's nor in "
                                    r"DM_ALLOWED_DOMAINS; trying again in 1 s")
                assert pyz.read_bytes() == old and not refused(tmp_path)
                assert agent.stop() == 0
            env["DM_ALLOWED_DOMAINS"] = "127.0.0.1,localhost"
            with AgentProcess(env, bundle=pyz) as agent:
                assert wait_until(lambda: agent_version(server) == NEW, 60), agent.log()
                assert agent.stop() == 0
    finally:
        redirector.shutdown()
        redirector.server_close()


@pytest.mark.parametrize(
    ("main", "why"),
    [
        ("raise SystemExit(3)\n", "it exited before registering"),
        ("import time\ntime.sleep(600)\n", "it did not register within 2 s"),
    ],
    ids=["exits-at-once", "never-registers"],
)
def test_a_new_build_that_does_not_register_is_rolled_back(
    server: Any, tmp_path: Path, main: str, why: str
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    env = agent_env(
        server, tmp_path, DM_HEARTBEAT_SECONDS="1", DM_UPDATE_PROBATION_SECONDS="2"
    )
    bad = pyz_with("depman-agent/66.0.0", main=main)
    with AgentProcess(env, bundle=pyz) as agent:
        try:
            agent.wait_for_line("Registered dependency agent")
            publish(server, tmp_path, bad)
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
            assert agent_version(server) == p.AGENT_VERSION
            heartbeats_seen(server, 2)  # the previous build runs on, no second try
            assert agent.log().count("offered: downloading") == 1
        finally:  # the previous build the watchdog started is not the test's child
            for _version, pid in STARTED_RE.findall(agent.log()):
                if agent.proc is None or int(pid) != agent.proc.pid:
                    stop_pid(int(pid))


# The real agent, except that it never gets to register (it waits to be stopped).
NEVER_REGISTERS = """\
from depman.agent import loop
from depman.agent.errors import Stopping


def never_register(agent):
    agent.stop.wait()
    raise Stopping("stopped before registering")


loop.Agent.register = never_register
from depman.agent.main import main

raise SystemExit(main())
"""


def test_a_build_killed_during_probation_rearms_its_watchdog_at_start(
    server: Any, tmp_path: Path
) -> None:
    """A reboot during probation: agent and watchdog die; the build starts again alone."""
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    bad = pyz_with("depman-agent/66.2.0", main=NEVER_REGISTERS)
    env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1",
                    DM_UPDATE_PROBATION_SECONDS="600")
    with AgentProcess(env, bundle=pyz) as agent:
        agent.wait_for_line("Registered dependency agent")
        publish(server, tmp_path, bad)
        agent.wait_for_line(r"Starting depman-agent/66\.2\.0 \(pid")
        pending = json.loads(marker(tmp_path).read_text())
        assert pending["watchdog_pid"]
        os.kill(pending["watchdog_pid"], signal.SIGKILL)
        assert agent.proc is not None
        agent.proc.kill()
        agent.proc.wait(30)
    assert pyz.read_bytes() == bad and marker(tmp_path).exists()
    # Started again (the machine is back) with a short probation, still unregistered.
    env["DM_UPDATE_PROBATION_SECONDS"] = "2"
    with AgentProcess(env, bundle=pyz) as agent:
        try:
            agent.wait_for_line("its watchdog is gone; watching again")
            agent.wait_for_line(
                r"failed: it did not register within 2 s\. Rolling back", timeout=60
            )
            assert wait_until(lambda: agent_version(server) == p.AGENT_VERSION
                              and "refused earlier: rolled back" in agent.log(), 60), agent.log()
            assert pyz.read_bytes() == old
            assert set(refused(tmp_path)) == {sha256_hex(bad)}
            assert not marker(tmp_path).exists()
        finally:  # the previous build the watchdog started is not the test's child
            for _version, pid in STARTED_RE.findall(agent.log()):
                if agent.proc is None or int(pid) != agent.proc.pid:
                    stop_pid(int(pid))


def test_an_agent_run_from_source_or_with_self_update_off_keeps_running(
    server: Any, tmp_path: Path
) -> None:
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    publish(server, tmp_path, pyz_with(NEW))
    env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1")
    with AgentProcess(env) as agent:  # python -m depman.agent: nothing of its own to replace
        agent.wait_for_line("runs from an installed package, not depman-agent.pyz")
        heartbeats_seen(server, 2)
        assert agent.log().count("runs from an installed package") == 1
        assert agent_version(server) == p.AGENT_VERSION
        assert agent.stop() == 0
    with AgentProcess({**env, "DM_SELF_UPDATE": "off"}, bundle=pyz) as agent:
        agent.wait_for_line(r"not installing it \(DM_SELF_UPDATE is off\)")
        heartbeats_seen(server, 2)
        assert pyz.read_bytes() == old and "downloading" not in agent.log()
        assert agent.stop() == 0


def test_under_a_restart_loop_a_rollback_leaves_one_agent_running(
    server: Any, tmp_path: Path
) -> None:
    """`depman onstart` restarts an agent that exits; the watchdog restarts it too."""
    pyz, old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    env = {
        "PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", "PY": sys.executable,
        "PYZ": str(pyz),
        **agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1",
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
        publish(server, tmp_path, bad)
        assert wait_until(lambda: "waiting until it stops" in log(), 60), log()
        assert wait_until(lambda: log().count("Registered dependency agent") == 2, 30), log()
        heartbeats_seen(server, 3)
        text = log()
        assert text.count("Registered dependency agent") == 2  # one agent runs, one waits
        assert text.count("waiting until it stops") == 1 and "Rolling back" in text
        assert pyz.read_bytes() == old
        assert agent_version(server) == p.AGENT_VERSION
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
