"""Memos on and memos off give every agent the same answers: a differential test.

Hypothesis's stateful testing runs random sequences of agent requests (register,
heartbeats, polls, status reports, queue-item checks), jobs, operator actions and
catalog, profile and instance changes against two stacks: one with memos on (on
PostgreSQL, two replicas that share the database and take the agent requests in
turn) and one with `DEPMAN_AGENT_MEMOS=off`. Every agent answer must be equal
(tokens aside). A write path that left a memo stale shows up as a difference.

Between steps on two replicas the test waits until each has applied the changes
the other one sent (`depman_cache_notices_*` in /metrics): replicas agree once
NOTIFY arrives, and the test checks the memos, not the delivery delay.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from tests.server.fleet import dep_doc, uid
from tests.support.server import RunningServer, postgres_database, run_replica, run_server

pytestmark = pytest.mark.slow

# Sweeps run on a timer: each side would place a waiting job at its own moment.
QUIET = {"DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "3600"}
MEMOS_OFF = {**QUIET, "DEPMAN_AGENT_MEMOS": "off"}
DEPS = ("s1", "s2", "d1", "d2")
INSTANCES = 2
NOTICES = re.compile(r"^depman_cache_notices_(sent|received)_total (\S+)$", re.MULTILINE)


@dataclass
class Side:
    """One stack: the servers that take agent requests (replicas), the first for admin."""

    servers: list[RunningServer]
    tokens: dict[str, str] = field(default_factory=dict)
    # Notices counted before the replicas could hear each other (see `listening`).
    baseline: list[dict[str, float]] = field(default_factory=list)

    @property
    def admin_server(self) -> RunningServer:
        return self.servers[0]

    def listening(self) -> Side:
        """Wait until the first replica heard the second start (its `x:`), then count from
        there: what the first sent before the second listened never arrives."""
        if len(self.servers) > 1:
            deadline = time.monotonic() + 20
            while _notices(self.servers[0]).get("received", 0) < 1:
                assert time.monotonic() < deadline, "the replicas never heard each other"
                time.sleep(0.05)
        self.baseline = [_notices(server) for server in self.servers]
        return self

    def settle(self) -> None:
        """Wait until every replica applied what the others sent."""
        if len(self.servers) < 2:
            return
        deadline = time.monotonic() + 10
        while True:
            counts = [
                {k: now.get(k, 0) - base.get(k, 0) for k in ("sent", "received")}
                for now, base in zip(
                    (_notices(server) for server in self.servers), self.baseline, strict=True
                )
            ]
            sent = sum(c["sent"] for c in counts)
            if all(c["received"] >= sent - c["sent"] for c in counts):
                return
            assert time.monotonic() < deadline, f"replicas never caught up: {counts}"
            time.sleep(0.01)


def _notices(server: RunningServer) -> dict[str, float]:
    status, text = server.request("GET", "/metrics")
    assert status == 200
    return {kind: float(value) for kind, value in NOTICES.findall(str(text))}


def _stacks(kind: str, tmp: Path) -> Iterator[tuple[Side, Side]]:
    if kind == "sqlite":
        with (
            run_server(f"sqlite:///{tmp / 'on.db'}", cwd=tmp, extra_env=QUIET) as on,
            run_server(f"sqlite:///{tmp / 'off.db'}", cwd=tmp, extra_env=MEMOS_OFF) as off,
        ):
            yield Side([on]), Side([off])
        return
    with (
        postgres_database() as url_on,
        postgres_database() as url_off,
        run_server(url_on, cwd=tmp, extra_env=QUIET) as first,
        run_replica(first, cwd=tmp) as second,
        run_server(url_off, cwd=tmp, extra_env=MEMOS_OFF) as off,
    ):
        # The replica runs with the defaults but the sweep: quiet it like the others.
        yield Side([first, second]).listening(), Side([off])


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def stacks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Side, Side]]:
    yield from _stacks(request.param, tmp_path_factory.mktemp(request.param))


def _normal(answer: tuple[int, Any]) -> tuple[int, Any]:
    """An answer without what differs between two stacks anyway: tokens, times."""
    status, body = answer
    return status, _untimed(body)


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _untimed(v) for k, v in value.items() if k != "agentToken" and not k.endswith("At")
        }
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


class Differential(RuleBasedStateMachine):
    """The same operations on both sides; agent answers compared after each."""

    sides: tuple[Side, Side]

    @initialize()
    def fleet(self) -> None:
        self.prefix = uid("diff")
        self.server_type = f"{self.prefix}-type"
        self.profile = f"{self.prefix}-profile"
        self.deps = {name: f"{self.prefix}-{name}" for name in DEPS}
        self.instances = [f"{self.prefix}-i{n}" for n in range(INSTANCES)]
        self.items: dict[str, list[dict[str, Any]]] = {i: [] for i in self.instances}
        self.seen: dict[str, set[str]] = {i: set() for i in self.instances}  # deps polled
        self.jobs: list[str] = []
        for name, dep_id in self.deps.items():
            self.admin("PUT", f"/admin/deps/{dep_id}", self._dep(name, 1000))
        self.admin("PUT", f"/admin/profiles/{self.profile}", self._profile(["s1"]))
        self.admin(
            "PUT",
            f"/admin/server-types/{self.server_type}",
            {
                "modelManagement": {"mode": "dependency_manager_v1", "profileId": self.profile},
                "maxActiveJobs": 1,
            },
        )
        for instance_id in self.instances:
            self.admin("PUT", f"/admin/instances/{instance_id}", {"serverType": self.server_type})

    # -- helpers --------------------------------------------------------------
    def _dep(self, name: str, size: int) -> dict[str, Any]:
        kind = "static" if name.startswith("s") else "dynamic"
        return dep_doc(self.deps[name], size, kind)

    def _profile(self, static: list[str]) -> dict[str, Any]:
        return {
            "staticDepIds": [self.deps[name] for name in static],
            "prefetchOnBoot": True,
            "dynamicPolicy": {"enabled": True, "minFreeBytes": 1024},
        }

    def admin(self, method: str, path: str, body: Any = None) -> list[tuple[int, Any]]:
        answers = []
        for side in self.sides:
            answers.append(side.admin_server.admin(method, path, body))
            side.settle()
        assert answers[0][0] == answers[1][0], (method, path, answers)
        return answers

    def agent(
        self, replica: int, instance_id: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        answers = []
        for side in self.sides:
            server = side.servers[replica % len(side.servers)]
            token = side.tokens.get(instance_id, "none")
            headers = {"Authorization": f"Bearer {token}"}
            if path.endswith("/register"):
                headers = {"X-DM-Secret": server.shared_secret}
            answer = server.request(method, path, body, headers)
            if path.endswith("/register") and answer[0] == 200:
                side.tokens[instance_id] = answer[1]["agentToken"]
            answers.append(_normal(answer))
            side.settle()
        assert answers[0] == answers[1], (method, path, body, answers)
        return answers[0]

    # -- agent requests -------------------------------------------------------
    @rule(instance=st.integers(0, INSTANCES - 1), replica=st.integers(0, 1))
    def register(self, instance: int, replica: int) -> None:
        instance_id = self.instances[instance]
        body = {
            "serverType": self.server_type,
            "agentVersion": "test/1",
            "instanceId": instance_id,
        }
        self.agent(replica, instance_id, "POST", "/api/dependencies/register", body)

    @rule(
        instance=st.integers(0, INSTANCES - 1),
        replica=st.integers(0, 1),
        installed=st.sets(st.sampled_from(DEPS)),
        failed=st.sets(st.sampled_from(DEPS), max_size=1),
        downloading=st.sets(st.sampled_from(DEPS), max_size=1),
        free=st.sampled_from([10**12, 10**9]),
    )
    def heartbeat(
        self,
        instance: int,
        replica: int,
        installed: set[str],
        failed: set[str],
        downloading: set[str],
        free: int,
    ) -> None:
        instance_id = self.instances[instance]
        body = {
            "instanceId": instance_id,
            "installedStaticDepIds": sorted(self.deps[n] for n in installed if n[0] == "s"),
            "installedDynamicDepIds": sorted(self.deps[n] for n in installed if n[0] == "d"),
            "downloadingDepIds": sorted(self.deps[n] for n in downloading),
            "failedDepIds": sorted(self.deps[n] for n in failed),
            "diskStats": {"totalBytes": 2 * 10**12, "freeBytes": free, "usedBytes": 1},
            "dynamicBytesUsed": 0,
        }
        self.agent(replica, instance_id, "POST", "/api/dependencies/heartbeat", body)

    @rule(instance=st.integers(0, INSTANCES - 1), replica=st.integers(0, 1))
    def poll(self, instance: int, replica: int) -> None:
        instance_id = self.instances[instance]
        status, body = self.agent(
            replica, instance_id, "GET", f"/api/dependencies/queue?instanceId={instance_id}"
        )
        if status == 200:
            self.items[instance_id] = body["items"]
            self.seen[instance_id].update(item["depId"] for item in body["items"])

    @rule(
        instance=st.integers(0, INSTANCES - 1),
        replica=st.integers(0, 1),
        pick=st.integers(0, 10),
        state=st.sampled_from(["running", "succeeded", "failed"]),
    )
    def status(self, instance: int, replica: int, pick: int, state: str) -> None:
        instance_id = self.instances[instance]
        items = self.items[instance_id]
        if not items:
            return
        item = items[pick % len(items)]
        body = {
            "instanceId": instance_id,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "state": state,
            "diskStats": {"totalBytes": 2 * 10**12, "freeBytes": 10**12, "usedBytes": 1},
        }
        if state == "failed":
            body["error"] = "disk said no"
        self.agent(replica, instance_id, "POST", "/api/dependencies/status", body)

    @rule(
        instance=st.integers(0, INSTANCES - 1), replica=st.integers(0, 1), pick=st.integers(0, 10)
    )
    def queue_item(self, instance: int, replica: int, pick: int) -> None:
        instance_id = self.instances[instance]
        items = self.items[instance_id]
        if not items:
            return
        item_id = items[pick % len(items)]["itemId"]
        path = f"/api/dependencies/queue-item?instanceId={instance_id}&itemId={item_id}"
        self.agent(replica, instance_id, "GET", path)

    # -- jobs, operators, catalog ----------------------------------------------
    @rule(needs=st.sets(st.sampled_from(DEPS), min_size=1, max_size=3))
    def submit_job(self, needs: set[str]) -> None:
        job_id = f"{self.prefix}-job{len(self.jobs)}"
        body = {
            "jobId": job_id,
            "serverType": self.server_type,
            "depIds": sorted(self.deps[n] for n in needs),
        }
        self.admin("POST", "/jobs", body)
        self.jobs.append(job_id)

    @rule(pick=st.integers(0, 20), how=st.sampled_from(["start", "complete", "cancel"]))
    def end_job(self, pick: int, how: str) -> None:
        if not self.jobs:
            return
        job_id = self.jobs[pick % len(self.jobs)]
        if how == "cancel":
            self.admin("POST", f"/admin/jobs/{job_id}/cancel", {})
        elif how == "start":
            self.admin("POST", f"/jobs/{job_id}/start", {})
        else:
            self.admin("POST", f"/jobs/{job_id}/complete", {"ok": True})

    @rule(instance=st.integers(0, INSTANCES - 1), drained=st.booleans())
    def drain(self, instance: int, drained: bool) -> None:
        path = f"/admin/instances/{self.instances[instance]}/drain"
        self.admin("POST", path, {"drained": drained})

    @rule(
        instance=st.integers(0, INSTANCES - 1),
        pick=st.integers(0, 10),
        action=st.sampled_from(["cancel", "retry"]),
    )
    def operate_item(self, instance: int, pick: int, action: str) -> None:
        instance_id = self.instances[instance]
        seen = sorted(self.seen[instance_id])
        if not seen:
            return
        dep_id = seen[pick % len(seen)]
        path = f"/admin/queues/{instance_id}/items/{dep_id}/{action}"
        self.admin("POST", path, {"reason": "operator"} if action == "cancel" else {})

    @rule(static=st.sets(st.sampled_from(["s1", "s2"])))
    def change_profile(self, static: set[str]) -> None:
        self.admin("PUT", f"/admin/profiles/{self.profile}", self._profile(sorted(static)))

    @rule(dep=st.sampled_from(DEPS), size=st.sampled_from([1000, 5000]))
    def change_dep(self, dep: str, size: int) -> None:
        self.admin("PUT", f"/admin/deps/{self.deps[dep]}", self._dep(dep, size))

    @rule(instance=st.integers(0, INSTANCES - 1))
    def recreate_instance(self, instance: int) -> None:
        instance_id = self.instances[instance]
        self.admin("DELETE", f"/admin/instances/{instance_id}")
        self.admin("PUT", f"/admin/instances/{instance_id}", {"serverType": self.server_type})
        self.items[instance_id] = []
        self.seen[instance_id] = set()


def test_memos_never_change_an_agent_answer(stacks: tuple[Side, Side]) -> None:
    Differential.sides = stacks
    replicas = len(stacks[0].servers) > 1  # each step waits for NOTIFY: fewer of them
    run_state_machine_as_test(
        Differential,
        settings=settings(
            max_examples=5 if replicas else 20,
            stateful_step_count=30 if replicas else 40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
