"""Start the demo's processes: control plane, model origin, agents (also used by the e2e tests)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from depman.demo.processes import (
    SERVER_LISTEN_RE,
    ChildProcess,
    child_env,
    python_module_argv,
)

ORIGIN_LISTEN_RE = re.compile(r"origin listening on (http://[\w.\-]+:\d+)")
AGENT_REGISTERED_RE = re.compile(r"Registered dependency agent: instanceId=(\S+)")
START_TIMEOUT_SECONDS = 60.0
# Short intervals: the demo must finish in well under a minute.
DEMO_HEARTBEAT_SECONDS = 1.0
DEMO_LIVE_TTL_SECONDS = 6.0


@dataclass
class Service:
    """A started child and the URL it listens on."""

    process: ChildProcess
    url: str


def start_origin(log_dir: Path, token: str) -> Service:
    """The model origin on 127.0.0.1, any free port."""
    proc = ChildProcess(
        "origin",
        python_module_argv("depman.demo.origin", "--host", "127.0.0.1", "--port", "0",
                           "--token", token),
        env=child_env({}),
        log_path=log_dir / "origin.log",
    )
    url = proc.wait_for_line(ORIGIN_LISTEN_RE, START_TIMEOUT_SECONDS).group(1)
    return Service(proc, url)


def server_env(
    *,
    database_url: str,
    admin_token: str,
    shared_secret: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of a demo control plane with short heartbeat and sweep intervals."""
    return child_env(
        {
            "DEPMAN_DATABASE_URL": database_url,
            "DEPMAN_ADMIN_TOKEN": admin_token,
            "DEPENDENCY_MANAGER_SHARED_SECRET": shared_secret,
            "DEPMAN_HEARTBEAT_SECONDS": str(DEMO_HEARTBEAT_SECONDS),
            "DEPMAN_LIVE_TTL_SECONDS": str(DEMO_LIVE_TTL_SECONDS),
            "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "1",
            **(extra or {}),
        }
    )


def spawn_server(log_dir: Path, env: Mapping[str, str], cwd: Path) -> ChildProcess:
    """`depman server --port 0` on loopback, not yet waited for (it imports for seconds)."""
    return ChildProcess(
        "server",
        python_module_argv("depman", "server", "--host", "127.0.0.1", "--port", "0"),
        env=env,
        log_path=log_dir / "server.log",
        cwd=cwd,
    )


def wait_listening(proc: ChildProcess, pattern: re.Pattern[str] = SERVER_LISTEN_RE) -> Service:
    """Block until the child prints its listen line."""
    return Service(proc, proc.wait_for_line(pattern, START_TIMEOUT_SECONDS).group(1))


@dataclass(frozen=True)
class AgentSpec:
    """Where one demo agent lives and how it reaches the control plane."""

    instance_id: str
    server_type: str
    api_base_url: str
    shared_secret: str
    workspace: Path
    hf_token: str | None = None
    heartbeat_seconds: float = DEMO_HEARTBEAT_SECONDS

    @property
    def comfyui_dir(self) -> Path:
        return self.workspace / "ComfyUI"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The agent's environment (protocol-v1 names plus depman's knobs)."""
        values = {
            "FCS_API_BASE_URL": self.api_base_url,
            "SERVER_TYPE": self.server_type,
            "DEPENDENCY_MANAGER_SHARED_SECRET": self.shared_secret,
            "DM_INSTANCE_ID": self.instance_id,
            "WORKSPACE": str(self.workspace),
            "DM_COMFYUI_DIR": str(self.comfyui_dir),
            "DM_STATE_PATH": str(self.workspace / "dependency_agent_state.json"),
            "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
            "DM_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "DM_POLL_SECONDS": "1",
            "DM_PROGRESS_SECONDS": "0.5",
            "DM_ITEM_RETRY_SECONDS": "0.5",
            "DM_DOWNLOAD_CONNECTIONS": "4",
            "MAX_PARALLEL_DOWNLOADS": "2",
        }
        if self.hf_token:
            values["HF_TOKEN"] = self.hf_token
        values.update(extra or {})
        return child_env(values)


def start_agent(
    spec: AgentSpec,
    log_dir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    wait_registered: bool = True,
) -> ChildProcess:
    """`python -m depman agent` for one instance; waits for its registration line."""
    (spec.comfyui_dir / "models").mkdir(parents=True, exist_ok=True)
    proc = ChildProcess(
        f"agent-{spec.instance_id}",
        python_module_argv("depman", "agent"),
        env=spec.env(extra_env),
        log_path=log_dir / f"agent-{spec.instance_id}.log",
    )
    if wait_registered:
        proc.wait_for_line(AGENT_REGISTERED_RE, START_TIMEOUT_SECONDS)
    return proc
