"""Schemathesis against /openapi.json of a live server, with valid admin and agent credentials.

Every operation gets generated requests (valid and invalid) sent with the
credentials its route takes; no answer may be a 5xx or contradict the response
schema the operation declares. Kept short for CI (`DEPMAN_FUZZ_EXAMPLES`, default
4 per operation and mode); `bench/fuzz_api.py` runs the same with many more.

Then stateful sequences (a hypothesis state machine driving real HTTP): agents
register, heartbeat, poll and report on items they were handed (and on odd item
ids), jobs are submitted, started, completed and cancelled, operators change the
catalog, profiles, server types and instances under them; no answer may be a
5xx (`DEPMAN_FUZZ_STATEFUL_EXAMPLES` x `DEPMAN_FUZZ_STATEFUL_STEPS`).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer, postgres_database, run_server

EXAMPLES = int(os.environ.get("DEPMAN_FUZZ_EXAMPLES", "4"))
AGENT_PREFIX = "/api/dependencies/"
# Generated `waitSeconds` go up to 30: long-polls still wait, but briefly.
SERVER_ENV = {"DEPMAN_MAX_LONG_POLL_SECONDS": "0.2"}


class Target:
    """The server under test and the agent whose token agent routes carry."""

    def __init__(self, server: RunningServer, agent: Agent) -> None:
        self.server = server
        self.agent = agent

    def headers(self, path: str) -> dict[str, str]:
        """The credentials the route takes."""
        if path == AGENT_PREFIX + "register":
            return {"X-DM-Secret": self.server.shared_secret}
        if path.startswith(AGENT_PREFIX):
            return {"Authorization": f"Bearer {self.agent.token}"}
        return {"Authorization": f"Bearer {self.server.admin_token}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=SERVER_ENV, cwd=tmp) as server:
            yield _target(server)
            _no_tracebacks(server)
    else:
        with postgres_database() as url, run_server(url, extra_env=SERVER_ENV, cwd=tmp) as server:
            yield _target(server)
            _no_tracebacks(server)


def _target(server: RunningServer) -> Target:
    fleet = make_fleet(server)
    return Target(server, fleet.register(fleet.add_instance("fuzz")))


def _no_tracebacks(server: RunningServer) -> None:
    assert "Traceback" not in server.logs(), server.logs()[-5000:]


def _aim_at_the_agent(case: Any, target: Target) -> None:
    """Agent requests name the agent's own instance, so they reach past the token check."""
    instance_id = target.agent.instance_id
    if isinstance(case.query, dict) and "instanceId" in case.query:
        case.query["instanceId"] = instance_id
    if isinstance(case.body, dict) and "instanceId" in case.body:
        case.body["instanceId"] = instance_id


def _exercise(operation: Any, mode: GenerationMode, target: Target) -> None:
    path = operation.path

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if path.startswith(AGENT_PREFIX) and path != AGENT_PREFIX + "register":
            _aim_at_the_agent(case, target)
        response = case.call_and_validate(
            base_url=target.server.root_url,
            headers=target.headers(path),
            checks=[not_a_server_error, response_schema_conformance],
            timeout=60,
        )
        if path == AGENT_PREFIX + "register" and response.status_code == 200:
            target.agent.token = response.json()["agentToken"]  # the old one stopped working

    run()


def test_no_server_errors_and_answers_match_the_schema(fuzz_target: Target) -> None:
    api = schemathesis.openapi.from_url(fuzz_target.server.root_url + "/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _exercise(operation, mode, fuzz_target)
            except Unsatisfiable:
                pass  # no parameters or body: nothing invalid to send
            except Exception as exc:  # collected: one report naming every failing operation
                name = f"{operation.method.upper()} {operation.path} ({mode.value})"
                failures.append(f"{name}: {exc}")
    assert not failures, "\n\n".join(failures)


# -- stateful sequences ---------------------------------------------------------------

STATEFUL_EXAMPLES = int(os.environ.get("DEPMAN_FUZZ_STATEFUL_EXAMPLES", "12"))
STATEFUL_STEPS = int(os.environ.get("DEPMAN_FUZZ_STATEFUL_STEPS", "40"))
DEPS = [f"sf-d{n}" for n in range(5)]
INSTANCES = [f"sf-i{n}" for n in range(3)]
SERVER_TYPES = ["sf-st0", "sf-st1"]
PROFILES = ["sf-p0", "sf-p1"]
JOBS = [f"sf-j{n}" for n in range(4)]
# Edges of the store's integer columns and past them.
ODD_INTS = [0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -1, 10**30]
sizes = st.one_of(st.integers(1, 10**9), st.sampled_from(ODD_INTS))
generations = st.sampled_from(["1", "2", "0", "99", "2147483647", "2147483648", "²", "1.5", ""])
texts = st.one_of(
    st.sampled_from(["", "x", "a/b", "a\x00b", "é" * 3, "x" * 400]), st.text(max_size=20)
)


class ApiSequences(RuleBasedStateMachine):
    """Random sequences of agent, admin and job calls on a shared fleet; no answer is a 5xx."""

    target: Target
    reached: Counter[str]  # what the sequences got to, across examples

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, str] = {}
        self.items: list[tuple[str, dict[str, Any]]] = []  # (instance, item) handed out
        self.calls: list[str] = []

    # -- plumbing --
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        admin: bool = True,
    ) -> tuple[int, Any]:
        server = self.target.server
        auth = {"Authorization": f"Bearer {server.admin_token}"} if admin else {}
        status, answer = server.request(method, path, body, {**auth, **(headers or {})})
        self.calls.append(f"{method} {path} -> {status}")
        self.reached["calls"] += 1
        assert status < 500, (method, path, body, status, answer, self.calls[-20:])
        return status, answer

    def agent(self, instance_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(instance_id, 'not-a-token')}"}

    @initialize()
    def a_working_fleet(self) -> None:
        """Every example starts from a fleet that works, so sequences reach past refusals."""
        for dep in DEPS:
            self.put_dep(dep, 1000, "static" if dep == DEPS[0] else "dynamic", True, "loras")
        for profile in PROFILES:
            self.put_profile(profile, DEPS[:2], True, 10**9)
        for server_type, profile in zip(SERVER_TYPES, PROFILES, strict=True):
            self.put_server_type(server_type, profile, 2)
        for n, instance in enumerate(INSTANCES):
            server_type = SERVER_TYPES[n % 2]
            self.put_instance(instance, server_type)
            self.register(instance, server_type)
            self.heartbeat(instance, [], [], 10**11, 10**9)

    # -- catalog and fleet --
    @rule(
        dep=st.sampled_from(DEPS),
        size=sizes,
        kind=st.sampled_from(["static", "dynamic", "x"]),
        sha=st.booleans(),
        folder=st.sampled_from(["loras", "checkpoints", "../up", ""]),
    )
    def put_dep(self, dep: str, size: int, kind: str, sha: bool, folder: str) -> None:
        doc: dict[str, Any] = {
            "url": f"https://huggingface.co/org/repo/resolve/main/{dep}.safetensors",
            "destRelativePath": f"models/{folder}/{dep}.safetensors",
            "expectedSizeBytes": size,
            "kind": kind,
        }
        if sha:
            doc["sha256"] = hashlib.sha256(dep.encode()).hexdigest()
        self.call("PUT", f"/api/admin/deps/{dep}", doc)

    @rule(dep=st.sampled_from(DEPS))
    def delete_dep(self, dep: str) -> None:
        self.call("DELETE", f"/api/admin/deps/{dep}")

    @rule(
        profile=st.sampled_from(PROFILES),
        static=st.lists(st.sampled_from(DEPS), max_size=4),
        prefetch=st.booleans(),
        cap=sizes,
    )
    def put_profile(self, profile: str, static: list[str], prefetch: bool, cap: int) -> None:
        doc = {
            "staticDepIds": static,
            "prefetchOnBoot": prefetch,
            "dynamicPolicy": {"enabled": True, "minFreeBytes": 1024, "maxDynamicBytes": cap},
        }
        self.call("PUT", f"/api/admin/profiles/{profile}", doc)

    @rule(
        server_type=st.sampled_from(SERVER_TYPES),
        profile=st.sampled_from([*PROFILES, None]),
        slots=st.sampled_from([1, 2, 3, 0, 2**31]),
    )
    def put_server_type(self, server_type: str, profile: str | None, slots: int) -> None:
        doc: dict[str, Any] = {"maxActiveJobs": slots}
        if profile is not None:
            doc["modelManagement"] = {"mode": "dependency_manager_v1", "profileId": profile}
        self.call("PUT", f"/api/admin/server-types/{server_type}", doc)

    @rule(
        what=st.sampled_from(["profiles", "server-types"]),
        name=st.sampled_from([*PROFILES, *SERVER_TYPES]),
    )
    def delete_type_or_profile(self, what: str, name: str) -> None:
        self.call("DELETE", f"/api/admin/{what}/{name}")

    @rule(instance=st.sampled_from(INSTANCES), server_type=st.sampled_from(SERVER_TYPES))
    def put_instance(self, instance: str, server_type: str) -> None:
        self.call(
            "PUT", f"/api/admin/instances/{instance}", {"ip": "10.1.0.1", "serverType": server_type}
        )

    @rule(instance=st.sampled_from(INSTANCES))
    def delete_instance(self, instance: str) -> None:
        self.call("DELETE", f"/api/admin/instances/{instance}")

    # -- the agent protocol --
    @rule(instance=st.sampled_from(INSTANCES), server_type=st.sampled_from(SERVER_TYPES))
    def register(self, instance: str, server_type: str) -> None:
        status, body = self.call(
            "POST",
            "/api/dependencies/register",
            {"serverType": server_type, "agentVersion": "fuzz/1", "instanceId": instance},
            headers={"X-DM-Secret": self.target.server.shared_secret},
            admin=False,
        )
        if status == 200:
            self.tokens[instance] = body["agentToken"]

    @rule(
        instance=st.sampled_from(INSTANCES),
        static=st.lists(st.sampled_from(DEPS), max_size=3),
        dynamic=st.lists(st.sampled_from([*DEPS, "sf-unknown"]), max_size=3),
        free=sizes,
        used=sizes,
    )
    def heartbeat(
        self, instance: str, static: list[str], dynamic: list[str], free: int, used: int
    ) -> None:
        body = {
            "instanceId": instance,
            "installedStaticDepIds": static,
            "installedDynamicDepIds": dynamic,
            "downloadingDepIds": dynamic[:1],
            "failedDepIds": static[:1],
            "diskStats": {"totalBytes": free + used, "freeBytes": free, "usedBytes": used},
            "dynamicBytesUsed": used,
        }
        self.call(
            "POST", "/api/dependencies/heartbeat", body, headers=self.agent(instance), admin=False
        )

    @rule(instance=st.sampled_from(INSTANCES), limit=st.sampled_from([1, 25, 1000, 0, 1001]))
    def poll(self, instance: str, limit: int) -> None:
        status, body = self.call(
            "GET",
            f"/api/dependencies/queue?instanceId={instance}&limit={limit}",
            headers=self.agent(instance),
            admin=False,
        )
        if status == 200:
            self.items += [(instance, item) for item in body["items"]]
            if body["items"]:
                self.reached["items handed out"] += 1

    @rule(
        pick=st.integers(0, 63),
        fallback=st.sampled_from(INSTANCES),
        state=st.sampled_from(
            ["running", "succeeded", "failed", "retrying", "cancelled", "paused"]
        ),
        error=st.one_of(st.none(), texts),
        generation=st.one_of(st.none(), generations),
        receipt=st.one_of(st.none(), sizes),
    )
    def status(
        self,
        pick: int,
        fallback: str,
        state: str,
        error: str | None,
        generation: str | None,
        receipt: int | None,
    ) -> None:
        # Draws never depend on the server's answers (hypothesis replays them): an index
        # into the items handed out so far, or an item of the instance drawn.
        if not self.items:  # report on what an agent was handed, when anything was
            for instance in INSTANCES:
                self.poll(instance, 25)
        if self.items:
            instance, item = self.items[pick % len(self.items)]
        else:
            instance = fallback
            item = {"itemId": f"{DEPS[0]}.1", "depId": DEPS[0], "op": "download"}
        item_id = item["itemId"]
        if generation is not None:
            item_id = f"{item['depId']}.{generation}"
        body: dict[str, Any] = {
            "instanceId": instance,
            "itemId": item_id,
            "depId": item["depId"],
            "op": item["op"],
            "state": state,
            "diskStats": {"totalBytes": 10**12, "freeBytes": 10**11, "usedBytes": 9 * 10**11},
            "dynamicBytesUsed": 0,
        }
        if error is not None:
            body["error"] = error
        if state == "succeeded" and receipt is not None:
            body["verification"] = {
                "algorithm": "sha256",
                "sha256": hashlib.sha256(item["depId"].encode()).hexdigest(),
                "sizeBytes": receipt,
                "mtimeNs": "1",
                "verifiedAtMs": 1,
                "destRelativePath": f"models/loras/{item['depId']}.safetensors",
                "finalPathVerified": True,
                "agentVersion": "fuzz/1",
            }
        status, answer = self.call(
            "POST", "/api/dependencies/status", body, headers=self.agent(instance), admin=False
        )
        if status == 200 and answer.get("applied"):
            self.reached["status applied"] += 1

    @rule(instance=st.sampled_from(INSTANCES), dep=st.sampled_from(DEPS), generation=generations)
    def item_check(self, instance: str, dep: str, generation: str) -> None:
        query = urlencode({"instanceId": instance, "itemId": f"{dep}.{generation}"})
        self.call(
            "GET",
            f"/api/dependencies/queue-item?{query}",
            headers=self.agent(instance),
            admin=False,
        )

    # -- jobs --
    @rule(
        server_type=st.sampled_from(SERVER_TYPES),
        deps=st.lists(st.sampled_from([*DEPS, "sf-missing"]), max_size=4),
        job=st.sampled_from([*JOBS, None]),
        workflow=st.booleans(),
    )
    def submit(self, server_type: str, deps: list[str], job: str | None, workflow: bool) -> None:
        body: dict[str, Any] = {"serverType": server_type, "depIds": deps}
        if job is not None:
            body["jobId"] = job
        if workflow:
            nodes = [
                {"id": n, "type": "LoraLoader", "widgets_values": [f"{d}.safetensors", 1, 1]}
                for n, d in enumerate(deps)
            ]
            body["workflow"] = {"nodes": nodes}
        status, answer = self.call("POST", "/api/jobs", body)
        if status == 200:
            self.reached[f"job {answer['state']}"] += 1

    @rule(
        job=st.sampled_from(JOBS),
        action=st.sampled_from(
            ["start", "complete-ok", "complete-failed", "cancel", "get", "wait"]
        ),
    )
    def job_action(self, job: str, action: str) -> None:
        if action == "get":
            self.call("GET", f"/api/jobs/{job}")
        elif action == "wait":
            self.call("GET", f"/api/jobs/{job}?waitSeconds=0.1")
        elif action == "start":
            self.call("POST", f"/api/jobs/{job}/start", {})
        elif action == "cancel":
            self.call("POST", f"/api/admin/jobs/{job}/cancel", {"reason": "fuzz"})
        else:
            ok = action == "complete-ok"
            self.call("POST", f"/api/jobs/{job}/complete", {"ok": ok, "error": None if ok else "x"})

    # -- operator actions and reads --
    @rule(
        instance=st.sampled_from(INSTANCES),
        dep=st.sampled_from(DEPS),
        action=st.sampled_from(["cancel", "retry", "delete", "delete-force", "drain", "undrain"]),
        after=st.sampled_from([None, 0, 1000, -1, 10**12]),
    )
    def operator(self, instance: str, dep: str, action: str, after: int | None) -> None:
        base = f"/api/admin/queues/{instance}/items/{dep}"
        if action == "cancel":
            self.call("POST", f"{base}/cancel", {"reason": "fuzz"})
        elif action == "retry":
            self.call("POST", f"{base}/retry", {} if after is None else {"afterMs": after})
        elif action.startswith("delete"):
            self.call(
                "POST",
                f"/api/admin/instances/{instance}/deps/{dep}/delete",
                {"force": action == "delete-force"},
            )
        else:
            self.call(
                "POST", f"/api/admin/instances/{instance}/drain", {"drained": action == "drain"}
            )

    @rule(
        path=st.sampled_from(
            [
                "/api/admin/instances",
                "/api/admin/deps",
                "/api/admin/profiles",
                "/api/admin/server-types",
                "/api/jobs",
                "/api/jobs?state=failed",
                "/api/admin/actions",
                "/metrics",
                *[f"/api/admin/instances/{i}" for i in INSTANCES],
                *[f"/api/admin/queues/{i}/items" for i in INSTANCES],
            ]
        )
    )
    def read(self, path: str) -> None:
        self.call("GET", path)


def test_stateful_sequences_find_no_server_errors(fuzz_target: Target) -> None:
    """Sequences of calls across the agent, admin and job APIs, each answer checked."""
    ApiSequences.target = fuzz_target
    ApiSequences.reached = Counter()
    run_state_machine_as_test(
        ApiSequences,
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # The sequences reached past validation into real state, not only refusals.
    reached = ApiSequences.reached
    assert reached["items handed out"] and reached["status applied"], reached
    assert any(key.startswith("job ") for key in reached), reached  # jobs were taken
