"""`depman onstart`: the printed script, run for real with bash against a real server.

The script installs the agent (sha256 checked against the server's published
value), runs it under a restart loop, and a kill -9 of the agent is followed by a
new agent process. A server publishing the wrong sha256 gets its file refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from depman.agent.bundle import bundle_bytes
from tests.agent.fakes import _Server
from tests.agent.test_agent_with_server import setup_fleet
from tests.support.wait import wait_until

pytest.importorskip("depman.server")


def depman_onstart(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPMAN_")}
    env.update(PYTHONPATH=str(Path(__file__).parents[2] / "src"), DEPMAN_ADMIN_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "depman", "onstart", *args],
                          capture_output=True, text=True, env=env)


def printed_script(server_type: str, server: Any) -> str:
    """The script for a type the server knows (it is asked, with the admin token)."""
    done = depman_onstart("--server-type", server_type, "--server", server.root_url,
                          token=server.admin_token)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def run_script(script: str, workspace: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    path = workspace.parent / "onstart.sh"
    path.write_text(script)
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(workspace.parent),
            "WORKSPACE": str(workspace), "DM_PYTHON": sys.executable, **env}
    # A session of its own: the restart loop and the agent go with it at the end.
    proc = subprocess.Popen(["bash", str(path)], env=base, start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.wait(30)  # the script starts the loop in the background and returns
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until the loop's wait reaps it.
    stat = read(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"


def test_onstart_script_installs_and_restarts_a_killed_agent(server: Any,
                                                             tmp_path: Path) -> None:
    setup_fleet(server, {}, [])
    script = printed_script("st", server)
    assert "DEPENDENCY_MANAGER_SHARED_SECRET" in script
    assert server.shared_secret not in script
    workspace = tmp_path / "workspace"
    log = workspace / "depman-agent.log"
    pid_file = workspace / "depman" / "agent.pid"
    with run_script(script, workspace, CONTAINER_ID="i1", PUBLIC_IPADDR="10.0.0.1",
                    DEPENDENCY_MANAGER_SHARED_SECRET=server.shared_secret,
                    DM_ALLOWED_DOMAINS="127.0.0.1") as proc:
        assert proc.returncode == 0
        assert proc.stdout is not None
        said = proc.stdout.read()  # what Vast.ai's on-start log shows
        assert f"agent log: {log}" in said
        assert f"bash {workspace / 'depman' / 'stop.sh'}" in said
        assert wait_until(lambda: "Registered dependency agent: instanceId=i1" in read(log),
                          60), read(log)
        text = read(log)
        assert "installed the agent (sha256 " in text
        assert "instanceId i1 (from CONTAINER_ID)" in text
        assert "instanceIp 10.0.0.1 (from PUBLIC_IPADDR)" in text
        installed = (workspace / "depman" / "depman-agent.pyz").read_bytes()
        status, published = server.request("GET", "/agent/depman-agent.pyz.sha256"
                                                  "?serverType=st")
        assert status == 200
        assert hashlib.sha256(installed).hexdigest() == str(published).strip()

        first = int(read(pid_file))
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: read(pid_file).strip() not in ("", str(first)), 30), read(log)
        second = int(read(pid_file))
        assert wait_until(lambda: read(log).count("Registered dependency agent") >= 2, 60)
        assert "agent exited with code 137" in read(log)
        assert alive(second) and not alive(first)

        loop = int(read(workspace / "depman" / "loop.pid").split()[0])
        stopped = subprocess.run(["bash", str(workspace / "depman" / "stop.sh")],
                                 capture_output=True, text=True, timeout=60)
        assert "stopped the restart loop" in stopped.stdout, stopped
        assert "stopped the agent" in stopped.stdout, stopped
        assert not alive(second) and not alive(loop)
        assert "Dependency agent stopped" in read(log)


def test_onstart_for_an_unknown_server_type_fails_naming_the_known_ones(
    server: Any,
) -> None:
    setup_fleet(server, {}, [])
    done = depman_onstart("--server-type", "sdxl-wroker", "--server", server.root_url,
                          token=server.admin_token)
    assert done.returncode == 1 and not done.stdout
    assert "'sdxl-wroker' does not exist" in done.stderr
    assert "known server types: st" in done.stderr
    stop = depman_onstart("--stop")
    assert stop.returncode == 0 and "stop_pid" in stop.stdout


def test_onstart_refuses_an_agent_whose_sha256_differs(tmp_path: Path) -> None:
    bundle = bundle_bytes()

    class Lying(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b"0" * 64 + b"\n" if ".sha256" in self.path else bundle
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _Server(("127.0.0.1", 0), Lying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        workspace = tmp_path / "workspace"
        log = workspace / "depman-agent.log"
        script = depman_onstart("--server-type", "st", "--server", url, "--no-check").stdout
        with run_script(script, workspace):
            assert wait_until(lambda: read(log).count("REFUSED") >= 2, 30), read(log)
            assert not (workspace / "depman" / "depman-agent.pyz").exists()
            assert not (workspace / "depman" / "agent.pid").exists()
            assert "agent started" not in read(log)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_stale_loop_pid_of_another_process_does_not_stop_the_agent(
    server: Any, tmp_path: Path
) -> None:
    """After a reboot loop.pid may name a pid that now belongs to something else."""
    setup_fleet(server, {}, [])
    script = printed_script("st", server)
    workspace = tmp_path / "workspace"
    log = workspace / "depman-agent.log"
    loop_pid = workspace / "depman" / "loop.pid"
    loop_pid.parent.mkdir(parents=True)
    env = {"DM_INSTANCE_ID": "i1", "DM_ALLOWED_DOMAINS": "127.0.0.1",
           "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret}
    with subprocess.Popen(["sleep", "600"]) as unrelated:
        try:
            for stale in (f"{unrelated.pid}\n", f"{unrelated.pid} some-other-boot 12345\n"):
                loop_pid.write_text(stale)
                with run_script(script, workspace, **env):
                    assert wait_until(lambda: "Registered dependency agent" in read(log),
                                      60), read(log)
                    assert "already running" not in read(log)
                    # Its own loop, though, is recognised: a second run starts nothing.
                    own = loop_pid.read_text().split()[0]
                    with run_script(script, workspace, **env) as again:
                        assert again.returncode == 0
                    assert f"restart loop is already running (pid {own})" in read(log)
                    assert read(log).count("restart loop started") == 1
                log.unlink()
        finally:
            unrelated.kill()
