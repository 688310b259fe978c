"""End-to-end fixtures: the demo origin and agents as real processes beside `server`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depman.demo.content import content_sha256
from depman.demo.launch import AgentSpec, Service, start_agent, start_origin
from depman.demo.origin import file_path
from depman.demo.processes import ChildProcess
from tests.support.server import RunningServer

# Agents and server talk every second, so waits below are in seconds, not minutes.
E2E_SERVER_ENV = {
    "DEPMAN_HEARTBEAT_SECONDS": "1",
    "DEPMAN_LIVE_TTL_SECONDS": "5",
    "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "1",
}
SERVER_TYPE = "e2e-sdxl"
PROFILE_ID = "e2e-profile"
ORIGIN_TOKEN = "hf_e2e_token"
MIB = 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFile:
    """A generated file on the origin and its catalog entry."""

    dep_id: str
    size: int
    kind: str = "dynamic"
    route: str = "files"
    bps: int | None = None  # throttle, to catch a download in flight
    sha256_override: str | None = None  # a wrong digest: fails everywhere

    @property
    def seed(self) -> str:
        return f"e2e-{self.dep_id}"

    @property
    def dest(self) -> str:
        folder = "checkpoints" if self.kind == "static" else "loras"
        return f"models/{folder}/{self.dep_id}.safetensors"

    @property
    def sha256(self) -> str:
        return content_sha256(self.seed, self.size)

    def url(self, origin_url: str) -> str:
        path = file_path(self.route, self.seed, self.size, f"{self.dep_id}.safetensors")
        return origin_url + path + (f"?bps={self.bps}" if self.bps else "")

    def catalog_entry(self, origin_url: str) -> dict[str, Any]:
        return {
            "url": self.url(origin_url),
            "auth": "hf_token" if self.route == "private" else "none",
            "destRelativePath": self.dest,
            "sha256": self.sha256_override or self.sha256,
            "expectedSizeBytes": self.size,
            "kind": self.kind,
        }


@dataclass
class Fleet:
    """A control plane, an origin and the agents a test started."""

    server: RunningServer
    origin: Service
    root: Path
    agents: dict[str, ChildProcess] = field(default_factory=dict)

    def apply(
        self,
        files: Sequence[ModelFile],
        instance_ids: Sequence[str],
        *,
        prefetch_on_boot: bool = True,
        dynamic_policy: Mapping[str, Any] | None = None,
    ) -> None:
        """PUT deps, the profile, the server type and the instances; assert each answer."""
        docs: list[tuple[str, dict[str, Any]]] = [
            (f"/admin/deps/{f.dep_id}", f.catalog_entry(self.origin.url)) for f in files
        ]
        docs.append(
            (
                f"/admin/profiles/{PROFILE_ID}",
                {
                    "staticDepIds": [f.dep_id for f in files if f.kind == "static"],
                    "prefetchOnBoot": prefetch_on_boot,
                    "dynamicPolicy": dict(dynamic_policy or {"enabled": False}),
                },
            )
        )
        docs.append(
            (
                f"/admin/server-types/{SERVER_TYPE}",
                {"modelManagement": {"mode": "dependency_manager_v1", "profileId": PROFILE_ID}},
            )
        )
        for iid in instance_ids:
            docs.append((f"/admin/instances/{iid}", {"ip": "127.0.0.1", "serverType": SERVER_TYPE}))
        for path, body in docs:
            status, answer = self.server.admin("PUT", path, body)
            assert status in (200, 201), (path, status, answer)

    def agent_spec(self, instance_id: str) -> AgentSpec:
        return AgentSpec(
            instance_id=instance_id,
            server_type=SERVER_TYPE,
            api_base_url=self.server.base_url,
            shared_secret=self.server.shared_secret,
            workspace=self.root / "instances" / instance_id,
            hf_token=ORIGIN_TOKEN,
        )

    def start_agent(self, instance_id: str, **extra_env: str) -> ChildProcess:
        agent = start_agent(
            self.agent_spec(instance_id), self.root / "logs", extra_env=extra_env
        )
        self.agents[instance_id] = agent
        return agent

    def comfyui_path(self, instance_id: str, model: ModelFile) -> Path:
        return self.agent_spec(instance_id).comfyui_dir / model.dest

    def instance(self, instance_id: str) -> dict[str, Any]:
        status, body = self.server.admin("GET", f"/admin/instances/{instance_id}")
        assert status == 200, (status, body)
        return dict(body)

    def inventory(self, instance_id: str) -> set[str]:
        dm = self.instance(instance_id).get("dependencyManager") or {}
        return set(dm.get("installedDepIdsStatic") or []) | set(
            dm.get("installedDepIdsDynamic") or []
        )

    def submit_job(self, dep_ids: Sequence[str], job_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"serverType": SERVER_TYPE, "depIds": list(dep_ids)}
        if job_id:
            body["jobId"] = job_id
        status, answer = self.server.admin("POST", "/jobs", body)
        assert status in (200, 201, 202), (status, answer)
        return dict(answer)

    def job(
        self, job_id: str, wait_seconds: int = 0, seen_state: str | None = None
    ) -> dict[str, Any]:
        query = f"?waitSeconds={wait_seconds}" if wait_seconds else ""
        if wait_seconds and seen_state:
            query += f"&seenState={seen_state}"
        status, body = self.server.admin("GET", f"/jobs/{job_id}{query}")
        assert status == 200, (status, body)
        return dict(body)

    def wait_job(self, job_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        """Long-poll the job until it is in one of `states`."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            job = self.job(job_id, wait_seconds=2, seen_state=seen[-1] if seen else None)
            if not seen or seen[-1] != job["state"]:
                seen.append(job["state"])
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} never reached {states}; states seen {seen}: {job}")

    def logs(self) -> str:
        """Every child's tail, for assertion messages."""
        parts = [f"--- server\n{self.server.logs()[-4000:]}"]
        parts += [f"--- {a.name}\n{a.tail(60)}" for a in self.agents.values()]
        return "\n".join(parts)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Service]:
    """The demo model origin as a subprocess."""
    service = start_origin(tmp_path / "logs", ORIGIN_TOKEN)
    try:
        yield service
    finally:
        service.process.stop()


@pytest.fixture
def fleet(server: RunningServer, origin: Service, tmp_path: Path) -> Iterator[Fleet]:
    """Server + origin; tests add files, instances and agents. Agents stop first."""
    running = Fleet(server, origin, tmp_path)
    try:
        yield running
    finally:
        for agent in running.agents.values():
            agent.stop()
