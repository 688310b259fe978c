"""Shared by the mirror tests: a fleet of one profile, agents, the CLI, the bucket's view."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.agent.running import SRC, AgentProcess
from tests.support.origin import ModelOrigin
from tests.support.server import RunningServer

MiB = 1024 * 1024


def blob(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def put(server: RunningServer, path: str, body: dict[str, Any]) -> None:
    status, answer = server.admin("PUT", path, body)
    assert status in (200, 201), (path, status, answer)


def put_dep(server: RunningServer, dep_id: str, origin: ModelOrigin, path: str,
            data: bytes, **extra: Any) -> None:
    put(server, f"/admin/deps/{dep_id}", {
        "url": origin.url(path), "auth": "none", "kind": "static",
        "destRelativePath": f"models/checkpoints/{dep_id}.safetensors",
        "sha256": hashlib.sha256(data).hexdigest(), "expectedSizeBytes": len(data), **extra,
    })


def put_type(server: RunningServer, server_type: str, static: list[str]) -> None:
    """A server type whose profile prefetches `static` at boot."""
    put(server, f"/admin/profiles/{server_type}-p", {
        "staticDepIds": static, "prefetchOnBoot": True, "dynamicPolicy": {"enabled": False}})
    put(server, f"/admin/server-types/{server_type}", {
        "modelManagement": {"mode": "dependency_manager_v1", "profileId": f"{server_type}-p"}})


def agent_env(server: RunningServer, workspace: Path, server_type: str,
              instance_id: str) -> dict[str, str]:
    put(server, f"/admin/instances/{instance_id}", {"ip": None, "serverType": server_type})
    return {
        "FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": server_type,
        "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret, "DM_INSTANCE_ID": instance_id,
        "WORKSPACE": str(workspace), "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
        "DM_HEARTBEAT_SECONDS": "2", "DM_POLL_SECONDS": "0.5", "DM_ITEM_RETRY_SECONDS": "0.1",
        "DM_MIN_SEGMENT_BYTES": "1MiB", "DM_PROGRESS_SECONDS": "1",
    }


def start_agents(server: RunningServer, tmp_path: Path, server_type: str,
                 count: int) -> list[AgentProcess]:
    return [
        AgentProcess(agent_env(server, tmp_path / f"ws-{server_type}-{n}", server_type,
                               f"{server_type}-i{n}")).__enter__()
        for n in range(count)
    ]


def installed(server: RunningServer, instance_id: str) -> set[str]:
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, body
    manager = body.get("dependencyManager") or {}
    return set(manager.get("installedDepIdsStatic") or [])


def depman_cli(server: RunningServer, *args: str, timeout: float = 120) -> str:
    """`depman ARGS` against the server; answers its output (asserting it exited 0)."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "COLUMNS": "200",
           "DEPMAN_URL": server.root_url, "DEPMAN_ADMIN_TOKEN": server.admin_token}
    done = subprocess.run([sys.executable, "-m", "depman", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def fetch(url: str) -> bytes:
    """A GET as a field agent makes it (urllib, no depman code)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
    return data


def metric(server: RunningServer, name: str) -> float:
    """The value of one sample of /metrics, e.g. `depman_source_bytes_total{kind="mirror"}`."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
