"""Test helpers: build a small fleet with unique ids and speak the agent protocol."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from tests.support.server import RunningServer


def uid(prefix: str) -> str:
    """A unique id, so tests can share one server."""
    return f"{prefix}-{secrets.token_hex(4)}"


def dep_doc(name: str, size: int = 1000, kind: str = "dynamic", **extra: Any) -> dict[str, Any]:
    """A valid catalog entry."""
    doc = {
        "url": f"https://huggingface.co/org/repo/resolve/main/{name}.safetensors",
        "auth": "none",
        "destRelativePath": f"models/loras/{name}.safetensors",
        "sha256": hashlib.sha256(name.encode()).hexdigest(),
        "expectedSizeBytes": size,
        "kind": kind,
    }
    doc.update(extra)
    return doc


@dataclass
class Agent:
    """One registered instance, talking protocol v1."""

    server: RunningServer
    instance_id: str
    token: str
    installed_static: list[str] = field(default_factory=list)
    installed_dynamic: list[str] = field(default_factory=list)
    free_bytes: int = 10**12

    @property
    def auth(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.token}"}

    def heartbeat(self, **extra: Any) -> tuple[int, Any]:
        """Send the inventory."""
        body = {
            "instanceId": self.instance_id,
            "installedStaticDepIds": self.installed_static,
            "installedDynamicDepIds": self.installed_dynamic,
            "downloadingDepIds": [],
            "failedDepIds": [],
            "diskStats": {"totalBytes": 2 * 10**12, "freeBytes": self.free_bytes, "usedBytes": 1},
            "dynamicBytesUsed": 0,
        }
        body.update(extra)
        return self.server.request("POST", "/api/dependencies/heartbeat", body, self.auth)

    def poll(self, limit: int = 25, wait: float | None = None) -> tuple[int, Any]:
        """Ask for queued items."""
        path = f"/api/dependencies/queue?instanceId={self.instance_id}&limit={limit}"
        if wait is not None:
            path += f"&waitSeconds={wait}"
        return self.server.request("GET", path, headers=self.auth)

    def status(self, item: dict[str, Any], state: str, error: str | None = None) -> tuple[int, Any]:
        """Report an item's state."""
        body = {
            "instanceId": self.instance_id,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "state": state,
            "diskStats": {"totalBytes": 2 * 10**12, "freeBytes": self.free_bytes, "usedBytes": 1},
            "dynamicBytesUsed": 0,
        }
        if error is not None:
            body["error"] = error
        return self.server.request("POST", "/api/dependencies/status", body, self.auth)

    def items(self) -> dict[str, dict[str, Any]]:
        """The admin view of this instance's queue, by dep id."""
        status, body = self.server.admin("GET", f"/admin/queues/{self.instance_id}/items")
        assert status == 200, body
        return {item["depId"]: item for item in body["items"]}


@dataclass
class Fleet:
    """Deps, one profile, one server type and some instances, all uniquely named."""

    server: RunningServer
    server_type: str
    profile_id: str
    deps: dict[str, str]

    def add_instance(self, name: str, ip: str | None = None) -> str:
        """Create an instance record; answers its id."""
        instance_id = uid(name)
        status, body = self.server.admin(
            "PUT", f"/admin/instances/{instance_id}", {"ip": ip, "serverType": self.server_type}
        )
        assert status == 200, body
        return instance_id

    def register_only(self, instance_id: str) -> Agent:
        """Register an agent for the instance; its first heartbeat is left to the test."""
        status, body = self.server.request(
            "POST",
            "/api/dependencies/register",
            {"serverType": self.server_type, "agentVersion": "test/1", "instanceId": instance_id},
            {"X-DM-Secret": self.server.shared_secret},
        )
        assert status == 200, body
        return Agent(self.server, instance_id, body["agentToken"])

    def register(self, instance_id: str, **installed: list[str]) -> Agent:
        """Register an agent for the instance and send its first heartbeat."""
        agent = self.register_only(instance_id)
        agent.installed_static = installed.get("static", [])
        agent.installed_dynamic = installed.get("dynamic", [])
        status, body = agent.heartbeat()
        assert status == 200, body
        return agent

    def submit(self, dep_names: list[str], **extra: Any) -> tuple[int, Any]:
        """Submit a job needing these deps (by short name)."""
        body = {
            "serverType": self.server_type,
            "depIds": [self.deps[n] for n in dep_names],
            **extra,
        }
        return self.server.admin("POST", "/jobs", body)


def make_fleet(
    server: RunningServer,
    sizes: dict[str, tuple[int, str]] | None = None,
    static: list[str] | None = None,
    prefetch: bool = False,
    max_active_jobs: int = 1,
) -> Fleet:
    """Create deps (short name → (size, kind)), a profile and a server type."""
    sizes = sizes or {"a": (1000, "static"), "b": (2000, "dynamic"), "c": (3000, "dynamic")}
    deps = {name: uid(f"dep-{name}") for name in sizes}
    for name, (size, kind) in sizes.items():
        status, body = server.admin(
            "PUT", f"/admin/deps/{deps[name]}", dep_doc(deps[name], size, kind)
        )
        assert status == 200, body
    profile_id = uid("profile")
    status, body = server.admin(
        "PUT",
        f"/admin/profiles/{profile_id}",
        {
            "staticDepIds": [deps[n] for n in (static or [])],
            "prefetchOnBoot": prefetch,
            "dynamicPolicy": {"enabled": True, "minFreeBytes": 1024},
        },
    )
    assert status == 200, body
    server_type = uid("stype")
    status, body = server.admin(
        "PUT",
        f"/admin/server-types/{server_type}",
        {
            "modelManagement": {"mode": "dependency_manager_v1", "profileId": profile_id},
            "maxActiveJobs": max_active_jobs,
        },
    )
    assert status == 200, body
    return Fleet(server, server_type, profile_id, deps)
