"""The agent gateway: one pipeline answers every agent request, whatever stage and front.

Each test checks what the agent sees, which stage answered (memo, quick or full,
from the server's own counters on `/metrics`), and whether the gateway's front
parsed the request or left it to FastAPI.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.server.fleet import Agent, Fleet, make_fleet
from tests.server.hostile import address
from tests.support.server import RunningServer, run_replica, run_server

STAGE_RE = re.compile(
    r'^depman_agent_(memo|quick|full)_answers_total\{endpoint="(\w+)"\} ([\d.]+)$', re.M
)
AGENT_FAILURES_RE = re.compile(r'^depman_auth_failures_total\{realm="agent"\} ([\d.]+)$', re.M)
# Another JSON media type: the front reads it as JSON too.
OTHER_JSON = "application/x-depman+json"
QUIET_BEAT = {"ok": True, "pinnedDepIds": [], "staticDepIds": []}
EMPTY_QUEUE = {"items": [], "pinnedDepIds": []}
NO_TOKEN = {"error": {"code": "unauthorized", "message": "missing agent token: register first"}}
WRONG_TOKEN = {
    "error": {"code": "unauthorized", "message": "invalid or expired agent token: register again"}
}
OTHERS_TOKEN = {
    "error": {"code": "forbidden", "message": "this agent token belongs to another instance"}
}


@dataclass(frozen=True)
class Served:
    """How one request was answered."""

    stage: str  # "memo", "quick", "full", or "none" (refused before any stage)
    status: int
    body: Any


def _counters(server: RunningServer) -> dict[tuple[str, str], float]:
    status, text_ = server.request("GET", "/metrics")
    assert status == 200
    return {(stage, endpoint): float(n) for stage, endpoint, n in STAGE_RE.findall(text_)}


def observe(server: RunningServer, endpoint: str, call: Callable[[], tuple[int, Any]]) -> Served:
    """Send one request (`call`) and tell which stage answered it."""
    stages = _counters(server)
    status, body = call()
    stages_after = _counters(server)
    moved = [
        stage
        for stage in ("memo", "quick", "full")
        if stages_after.get((stage, endpoint), 0.0) > stages.get((stage, endpoint), 0.0)
    ]
    assert len(moved) <= 1, moved
    return Served(moved[0] if moved else "none", status, body)


def served_by(
    server: RunningServer, endpoint: str, call: Callable[[], tuple[int, Any]]
) -> tuple[str, tuple[int, Any]]:
    """Which stage answered one call, and the answer."""
    served = observe(server, endpoint, call)
    return served.stage, (served.status, served.body)


def agent_failures(server: RunningServer) -> float:
    """Failed agent-token checks this server counted."""
    found = AGENT_FAILURES_RE.findall(server.request("GET", "/metrics")[1])
    return float(found[0]) if found else 0.0


@dataclass
class Sender(Agent):
    """An agent's requests sent with other headers (other credentials, another media type)."""

    headers: dict[str, str] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return self.headers


def sent_with(agent: Agent, headers: dict[str, str]) -> Sender:
    """The agent's own requests, carrying `headers` instead of its bearer header."""
    return Sender(
        agent.server,
        agent.instance_id,
        agent.token,
        agent.installed_static,
        agent.installed_dynamic,
        agent.free_bytes,
        headers,
    )


def placed_agent(server: RunningServer) -> tuple[Fleet, Agent, dict[str, Any]]:
    """An agent holding b, its memos set, with a job needing a and b placed on it."""
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("placed"), dynamic=[fleet.deps["b"]])
    assert agent.heartbeat()[0] == 200
    assert agent.poll()[0] == 200
    status, job = fleet.submit(["a", "b"])
    assert status == 200 and job["instanceId"] == agent.instance_id, job
    return fleet, agent, job


def instance_doc(server: RunningServer, instance_id: str) -> dict[str, Any]:
    """The admin view of an instance's agent fields (an admin read flushes the write-behind)."""
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, body
    doc: dict[str, Any] = body["dependencyManager"]
    return doc


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `check()` until true (NOTIFY and the flusher take milliseconds)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_which_stage_answers_a_heartbeat(server: RunningServer) -> None:
    fleet = make_fleet(server)
    a, b, c = fleet.deps["a"], fleet.deps["b"], fleet.deps["c"]
    agent = fleet.register(fleet.add_instance("beats"), dynamic=[b])  # first beat: full

    def stage(**extra: Any) -> str:
        how, answer = served_by(server, "heartbeat", partial(agent.heartbeat, **extra))
        assert answer == (200, QUIET_BEAT), (how, answer)
        return how

    assert stage() == "memo"  # nothing new but the time
    agent.free_bytes = 123_456
    assert stage() == "quick"  # new disk figures are written before the answer
    assert instance_doc(server, agent.instance_id)["diskStats"]["freeBytes"] == 123_456
    assert stage() == "memo"
    assert stage(downloadingDepIds=[a]) == "quick"  # its items need the database now
    assert stage() == "quick"  # the row listed the download: this beat clears it
    assert stage() == "memo"
    assert stage(failedDepIds=[a]) == "quick"
    assert stage(failedDepIds=[a]) == "memo"
    assert stage() == "quick"
    doc = instance_doc(server, agent.instance_id)
    assert doc["downloadingDepIds"] == [] and doc["failedDepIds"] == []
    agent.installed_dynamic = [b, c]
    assert stage() == "full"  # a changed inventory: the diff
    assert stage() == "memo"
    assert instance_doc(server, agent.instance_id)["installedDepIdsDynamic"] == sorted([b, c])


def test_which_stage_answers_a_poll(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("polls"), dynamic=[fleet.deps["b"]])
    assert served_by(server, "queue", agent.poll) == ("quick", (200, EMPTY_QUEUE))
    assert served_by(server, "queue", agent.poll) == ("memo", (200, EMPTY_QUEUE))
    # A long-poll of an empty queue: the memo's answer once the wait is over.
    assert served_by(server, "queue", lambda: agent.poll(wait=0.2)) == ("memo", (200, EMPTY_QUEUE))
    status, job = fleet.submit(["a", "b"])
    assert status == 200 and job["instanceId"] == agent.instance_id, job
    # The enqueue dropped the memo: the quick stage reads the queue.
    stage, (status, body) = served_by(server, "queue", agent.poll)
    assert (stage, status) == ("quick", 200)
    items = {item["depId"]: item for item in body["items"]}
    assert set(items) == {fleet.deps["a"], fleet.deps["b"]}
    assert items[fleet.deps["b"]]["op"] == "touch"
    assert body["pinnedDepIds"] == sorted([fleet.deps["a"], fleet.deps["b"]])
    # A long-poll that finds items answers with them, from the same read.
    assert served_by(server, "queue", lambda: agent.poll(wait=20)) == ("quick", (200, body))


def test_a_long_poll_is_woken_by_an_enqueue(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("woken"))
    assert agent.poll() == (200, EMPTY_QUEUE)  # the empty queue is memo'd
    result: list[Served] = []
    before = server.long_polls_waiting()
    waiting = threading.Thread(
        target=lambda: result.append(observe(server, "queue", lambda: agent.poll(wait=25)))
    )
    waiting.start()
    server.await_long_polls(before)  # the poll is waiting on its instance
    status, job = fleet.submit(["b"])
    assert status == 200 and job["instanceId"] == agent.instance_id, job
    waiting.join(30)
    (served,) = result
    # Woken, it read the queue again on the quick connection.
    assert (served.stage, served.status) == ("quick", 200)
    assert [item["depId"] for item in served.body["items"]] == [fleet.deps["b"]]
    assert served.body["pinnedDepIds"] == [fleet.deps["b"]]


def test_a_job_s_reports_take_the_quick_and_the_full_stage(server: RunningServer) -> None:
    fleet, agent, _job = placed_agent(server)
    items = {item["depId"]: item for item in agent.poll()[1]["items"]}
    download = items[fleet.deps["a"]]
    running = {"ok": True, "applied": True, "itemState": "running"}
    agent.free_bytes = 777_777
    assert served_by(server, "status", lambda: agent.status(download, "running")) == (
        "quick",
        (200, running),
    )
    # The report's disk figures are kept with the item's move.
    assert instance_doc(server, agent.instance_id)["diskStats"]["freeBytes"] == 777_777
    # A success may prove the dep installed and make the job ready: one transaction.
    succeeded = {"ok": True, "applied": True, "itemState": "succeeded"}
    assert served_by(server, "status", lambda: agent.status(download, "succeeded")) == (
        "full",
        (200, succeeded),
    )
    # Late and repeated reports are acknowledged and change nothing.
    ignored = {"ok": True, "applied": False, "itemState": "succeeded"}
    assert served_by(server, "status", lambda: agent.status(download, "running")) == (
        "quick",
        (200, ignored),
    )
    assert agent.status(download, "succeeded") == (200, ignored)
    stale = {**download, "itemId": f"{fleet.deps['a']}.99"}
    assert agent.status(stale, "succeeded") == (200, ignored)
    unknown = {**download, "itemId": "no-such-dep.1", "depId": "no-such-dep"}
    assert agent.status(unknown, "running") == (
        200,
        {"ok": True, "applied": False, "itemState": None},
    )
    assert agent.items()[fleet.deps["a"]]["state"] == "succeeded"
    # The pins changed: the memo went; the row already holds the inventory.
    agent.free_bytes = 10**12
    pins = sorted([fleet.deps["a"], fleet.deps["b"]])
    pinned = {"ok": True, "pinnedDepIds": pins, "staticDepIds": []}
    assert served_by(server, "heartbeat", agent.heartbeat) == ("quick", (200, pinned))
    assert served_by(server, "heartbeat", agent.heartbeat) == ("memo", (200, pinned))


def test_a_failed_report_moves_its_job_in_the_full_stage(server: RunningServer) -> None:
    fleet, agent, job = placed_agent(server)
    items = {item["depId"]: item for item in agent.poll()[1]["items"]}
    stage, (status, body) = served_by(
        server, "status", lambda: agent.status(items[fleet.deps["a"]], "failed", error="disk full")
    )
    assert (stage, status, body["applied"]) == ("full", 200, True)
    status, after = server.admin("GET", f"/jobs/{job['jobId']}")
    assert status == 200 and after["history"][-1]["event"] in ("failed", "dep_failed")


def test_register_and_the_queue_item_check_take_the_full_stage(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    instance_id = fleet.add_instance("items")
    document = {"serverType": fleet.server_type, "agentVersion": "t", "instanceId": instance_id}
    stage, (status, body) = served_by(
        server,
        "register",
        lambda: server.request(
            "POST", "/api/dependencies/register", document, {"X-DM-Secret": server.shared_secret}
        ),
    )
    assert (stage, status, body["instanceId"]) == ("full", 200, instance_id), body
    assert body["capabilities"]["maxWaitSeconds"] == 30
    agent = Agent(server, instance_id, body["agentToken"])
    (item,) = agent.poll()[1]["items"]

    def check(item_id: str) -> tuple[int, Any]:
        path = f"/api/dependencies/queue-item?instanceId={instance_id}&itemId={item_id}"
        return server.request("GET", path, headers=agent.auth)

    stage, (status, body) = served_by(server, "queue_item", lambda: check(item["itemId"]))
    assert (stage, status) == ("full", 200)
    assert body["item"]["itemId"] == item["itemId"] and body["item"]["state"] == "queued"
    dep = item["depId"]
    assert served_by(server, "queue_item", lambda: check(f"{dep}.7")) == (
        "full",
        (
            404,
            {
                "error": {"code": "not_found", "message": f"item '{dep}.7': superseded by {dep}.1"},
                "exists": False,
                "item": None,
                "currentItemId": f"{dep}.1",
            },
        ),
    )
    status, body = check("nope.1")
    assert status == 404 and body["exists"] is False and "currentItemId" not in body


def test_errors_are_the_same_whatever_stage_would_have_answered(server: RunningServer) -> None:
    fleet = make_fleet(server)
    warm = fleet.register(fleet.add_instance("warm"), dynamic=[fleet.deps["b"]])
    assert warm.poll()[0] == 200 and warm.poll()[0] == 200  # the memos would answer
    prefetching = make_fleet(server, static=["a"], prefetch=True)
    busy = prefetching.register(prefetching.add_instance("busy"))  # items queued
    (item,) = busy.poll()[1]["items"]
    stranger = fleet.register(fleet.add_instance("stranger"))

    def check_item(agent: Agent) -> tuple[int, Any]:
        query = f"instanceId={agent.instance_id}&itemId={item['itemId']}"
        return server.request("GET", f"/api/dependencies/queue-item?{query}", headers=agent.auth)

    def new_inventory(agent: Agent) -> tuple[int, Any]:
        return agent.heartbeat(installedDynamicDepIds=["x"])

    # endpoint, the owner and the stage that would answer it, the request, whether it has a body
    situations: list[tuple[str, Agent, str, Callable[[Agent], tuple[int, Any]], bool]] = [
        ("queue", warm, "memo", lambda agent: agent.poll(), False),
        ("queue", busy, "quick", lambda agent: agent.poll(), False),
        ("heartbeat", warm, "memo", lambda agent: agent.heartbeat(), True),
        ("heartbeat", warm, "full", new_inventory, True),
        ("status", busy, "quick", lambda agent: agent.status(item, "running"), True),
        ("status", busy, "full", lambda agent: agent.status(item, "failed", "x"), True),
        ("queue_item", busy, "full", check_item, False),
    ]
    credentials = [
        ({}, (401, NO_TOKEN)),
        ({"Authorization": "Bearer not-a-token"}, (401, WRONG_TOKEN)),
        ({"Authorization": "Basic abc"}, (401, NO_TOKEN)),
        (stranger.auth, (403, OTHERS_TOKEN)),
    ]
    for endpoint, owner, would, send, has_body in situations:
        # Another JSON media type is read as JSON: the same answers.
        fronts = [{}, {"Content-Type": OTHER_JSON}] if has_body else [{}]
        failures = agent_failures(server)
        for headers, expected in credentials:
            for front in fronts:
                impostor = sent_with(owner, {**headers, **front})
                served = observe(server, endpoint, partial(send, impostor))
                assert (served.status, served.body) == expected, (endpoint, would, headers)
                assert served.stage == "none", (endpoint, would, served)
        # Guesses are counted (a missing token is none), whatever would have answered.
        assert agent_failures(server) == failures + 2 * len(fronts), (endpoint, would)
    # None of it changed what the owners see.
    assert warm.heartbeat() == (200, QUIET_BEAT)
    assert busy.items()[item["depId"]]["state"] == "queued"


def test_invalid_requests_get_the_api_s_422_from_the_front(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("invalid"), dynamic=[fleet.deps["b"]])
    assert agent.poll()[0] == 200 and agent.heartbeat()[0] == 200  # memos would answer
    queue = f"/api/dependencies/queue?instanceId={agent.instance_id}"
    secret = {"X-DM-Secret": server.shared_secret}
    cases: list[tuple[str, Callable[[], tuple[int, Any]], str]] = [
        (
            "heartbeat",
            lambda: agent.heartbeat(queueDepth="many"),
            "queueDepth: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            "heartbeat",
            lambda: server.request(
                "POST",
                "/api/dependencies/heartbeat",
                raw_body=b"{not json",
                headers={**agent.auth, "Content-Type": "application/json"},
            ),
            "request body is not valid JSON",
        ),
        (
            "heartbeat",
            lambda: server.request(
                "POST",
                "/api/dependencies/heartbeat",
                raw_body=b"instanceId=x",
                headers={**agent.auth, "Content-Type": "application/x-www-form-urlencoded"},
            ),
            "request body must be JSON (Content-Type: application/json)",
        ),
        (
            "status",
            lambda: server.request(
                "POST",
                "/api/dependencies/status",
                {"instanceId": agent.instance_id, "itemId": "x.1"},
                agent.auth,
            ),
            "state: Field required",
        ),
        (
            "register",
            lambda: server.request(
                "POST", "/api/dependencies/register", {"agentVersion": "1"}, secret
            ),
            "serverType: Field required",
        ),
        (
            "queue",
            lambda: server.request("GET", queue + "&limit=5000", headers=agent.auth),
            "query.limit: Input should be less than or equal to 1000",
        ),
        (
            "queue",
            lambda: server.request("GET", queue + "&waitSeconds=31", headers=agent.auth),
            "query.waitSeconds: Input should be less than or equal to 30",
        ),
        (
            "queue",
            lambda: server.request("GET", "/api/dependencies/queue?limit=5", headers=agent.auth),
            "query.instanceId: Field required",
        ),
        (
            "queue_item",
            lambda: server.request(
                "GET",
                f"/api/dependencies/queue-item?instanceId={agent.instance_id}",
                headers=agent.auth,
            ),
            "query.itemId: Field required",
        ),
    ]
    for endpoint, call, message in cases:
        served = observe(server, endpoint, call)
        assert served.status == 422, (message, served)
        assert served.body == {"error": {"code": "validation_failed", "message": message}}
        assert served.stage == "none", (message, served)
    # A body over the agent routes' limit never reaches the gateway.
    status, body = agent.heartbeat(installedDynamicDepIds=[f"u{i}" for i in range(200_000)])
    assert status == 413 and body["error"]["code"] == "too_large"


def test_the_front_reads_repeated_parameters_the_usual_way(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("repeated"))
    queue = f"/api/dependencies/queue?instanceId={agent.instance_id}"
    # The last of a repeated query parameter counts.
    last_valid = partial(server.request, "GET", queue + "&limit=5000&limit=5", headers=agent.auth)
    served = observe(server, "queue", last_valid)
    assert (served.status, served.body) == (200, EMPTY_QUEUE)
    last_invalid = partial(server.request, "GET", queue + "&limit=5&limit=5000", headers=agent.auth)
    served = observe(server, "queue", last_invalid)
    assert (served.status, served.stage) == (422, "none")
    # The first of a repeated header counts.
    wrong = "Bearer not-a-token"

    def twice(first: str, second: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(*address(server), timeout=30)
        try:
            conn.putrequest("GET", queue)
            conn.putheader("Authorization", first)
            conn.putheader("Authorization", second)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    served = observe(server, "queue", lambda: twice(agent.auth["Authorization"], wrong))
    assert (served.status, served.body) == (200, EMPTY_QUEUE)
    served = observe(server, "queue", lambda: twice(wrong, agent.auth["Authorization"]))
    assert (served.status, served.body) == (401, WRONG_TOKEN)


def test_the_job_channel_is_refused_at_once(server: RunningServer) -> None:
    expected = {
        "error": {
            "code": "not_found",
            "message": "this control plane runs no /api/agent job channel; "
            "use the dependency protocol (/api/dependencies/*)",
        }
    }
    for method in ("GET", "POST", "DELETE"):
        assert server.request(method, "/api/agent/jobs/next") == (404, expected)


def test_the_openapi_document_describes_the_agent_endpoints(server: RunningServer) -> None:
    status, spec = server.request("GET", "/openapi.json")
    assert status == 200
    paths = spec["paths"]
    queue = paths["/api/dependencies/queue"]["get"]
    params = {p["name"]: p for p in queue["parameters"]}
    assert list(params) == ["instanceId", "limit", "waitSeconds", "authorization"]
    assert params["instanceId"]["required"] is True
    assert params["instanceId"]["schema"]["maxLength"] == 200
    limit, wait = params["limit"]["schema"], params["waitSeconds"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == (
        "integer",
        1,
        1000,
        25,
    )
    assert (wait["type"], wait["minimum"], wait["maximum"], wait["default"]) == ("number", 0, 30, 0)
    item = paths["/api/dependencies/queue-item"]["get"]
    assert [p["name"] for p in item["parameters"]] == ["instanceId", "itemId", "authorization"]
    bodies = {
        "register": "RegisterRequest",
        "heartbeat": "HeartbeatRequest",
        "status": "StatusRequest",
    }
    for name, model in bodies.items():
        operation = paths[f"/api/dependencies/{name}"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{model.replace('Request', 'Response')}"}
    register = paths["/api/dependencies/register"]["post"]
    assert [p["name"] for p in register["parameters"]] == ["X-DM-Secret"]
    for path, methods in paths.items():
        if path.startswith("/api/dependencies/"):
            for operation in methods.values():
                assert set(operation["responses"]) == {"200", "401", "403", "404", "422"}, path
    assert not [path for path in paths if path.startswith("/api/agent/")]


def test_heartbeats_from_memory_are_written_behind(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("behind"), dynamic=[fleet.deps["b"]])
    engine = create_engine(server.database_url)
    query = text("SELECT last_heartbeat_at FROM instances WHERE instance_id = :id")

    def stored() -> Any:
        with engine.connect() as conn:
            return conn.execute(query, {"id": agent.instance_id}).scalar_one()

    try:
        first = stored()
        time.sleep(0.01)  # a later time than the row's
        assert served_by(server, "heartbeat", agent.heartbeat)[0] == "memo"
        # Acknowledged at once, written by the flusher within heartbeat_flush_seconds.
        wait_for(lambda: stored() != first, "the acknowledged beat was never written")
    finally:
        engine.dispose()
    later = instance_doc(server, agent.instance_id)["lastHeartbeatAt"]
    time.sleep(0.01)
    assert served_by(server, "heartbeat", agent.heartbeat)[0] == "memo"
    # An admin read of the same process flushes first: it sees the beat it acknowledged.
    doc = instance_doc(server, agent.instance_id)
    assert doc["lastHeartbeatAt"] > later
    assert doc["installedDepIdsDynamic"] == [fleet.deps["b"]]


def test_reregister_voids_the_old_token_and_the_memos(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("rotated")
    old = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    assert old.poll()[0] == 200
    assert served_by(server, "heartbeat", old.heartbeat)[0] == "memo"
    assert served_by(server, "queue", old.poll)[0] == "memo"
    new = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    assert served_by(server, "heartbeat", old.heartbeat) == ("none", (401, WRONG_TOKEN))
    assert served_by(server, "queue", old.poll) == ("none", (401, WRONG_TOKEN))
    assert served_by(server, "queue", new.poll) == ("quick", (200, EMPTY_QUEUE))
    # Deleted: the memo'd token goes with it, on every path.
    assert server.admin("DELETE", f"/admin/instances/{instance_id}")[0] == 204
    assert new.poll()[0] == 401 and new.heartbeat()[0] == 401


def test_pins_reach_the_next_heartbeat_from_memory(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("pinned"), dynamic=[fleet.deps["b"]])
    assert served_by(server, "heartbeat", agent.heartbeat)[0] == "memo"
    status, job = fleet.submit(["b"])
    assert status == 200 and job["instanceId"] == agent.instance_id
    pinned = {"ok": True, "pinnedDepIds": [fleet.deps["b"]], "staticDepIds": []}
    assert served_by(server, "heartbeat", agent.heartbeat) == ("quick", (200, pinned))
    assert served_by(server, "heartbeat", agent.heartbeat) == ("memo", (200, pinned))
    assert agent.status(agent.poll()[1]["items"][0], "succeeded")[0] == 200  # the touch
    status, _ = server.admin("POST", f"/jobs/{job['jobId']}/start", {})
    assert status == 200
    status, _ = server.admin("POST", f"/jobs/{job['jobId']}/complete", {"ok": True})
    assert status == 200
    assert agent.heartbeat() == (200, QUIET_BEAT)


@pytest.mark.slow
def test_an_instance_that_went_stale_is_not_kept_live_by_memory(tmp_path: Path) -> None:
    env = {"DEPMAN_LIVE_TTL_SECONDS": "1"}
    with run_server(f"sqlite:///{tmp_path / 'ttl.db'}", cwd=tmp_path, extra_env=env) as server:
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("stale"), dynamic=[fleet.deps["b"]])
        assert served_by(server, "heartbeat", agent.heartbeat)[0] == "memo"
        time.sleep(1.2)
        # Past the live TTL: the full stage makes the instance live again.
        assert served_by(server, "heartbeat", agent.heartbeat)[0] == "full"
        assert served_by(server, "heartbeat", agent.heartbeat)[0] == "memo"


def test_write_behind_off_writes_every_heartbeat(tmp_path: Path) -> None:
    env = {"DEPMAN_HEARTBEAT_FLUSH_SECONDS": "0"}
    with run_server(f"sqlite:///{tmp_path / 'off.db'}", cwd=tmp_path, extra_env=env) as server:
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("off"))
        for _ in range(2):
            assert served_by(server, "heartbeat", agent.heartbeat) == ("quick", (200, QUIET_BEAT))
        assert served_by(server, "queue", agent.poll)[0] == "quick"
        assert served_by(server, "queue", agent.poll)[0] == "memo"


@pytest.mark.slow
@pytest.mark.postgres
def test_replicas_follow_each_other_s_changes_and_wake_each_other_s_long_polls(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    fleet = make_fleet(first)
    instance_id = fleet.add_instance("replicated")
    agent = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    assert served_by(first, "heartbeat", agent.heartbeat)[0] == "memo"
    assert agent.poll() == (200, EMPTY_QUEUE)
    # The second replica never saw this token: it checks it in the database once.
    on_second = Agent(second, instance_id, agent.token)
    wrong = {"Authorization": "Bearer not-a-token"}
    path = f"/api/dependencies/queue?instanceId={instance_id}"
    assert second.request("GET", path, headers=wrong) == (401, WRONG_TOKEN)
    assert served_by(second, "queue", on_second.poll) == ("quick", (200, EMPTY_QUEUE))
    # A long-poll on the first replica, woken by the second's enqueue (NOTIFY).
    result: list[Served] = []
    before = first.long_polls_waiting()
    waiting = threading.Thread(
        target=lambda: result.append(observe(first, "queue", lambda: agent.poll(wait=25)))
    )
    waiting.start()
    first.await_long_polls(before)
    status, job = second.admin(
        "POST", "/jobs", {"serverType": fleet.server_type, "depIds": [fleet.deps["b"]]}
    )
    assert status == 200 and job["instanceId"] == instance_id
    waiting.join(30)
    (served,) = result
    assert (served.stage, served.status) == ("quick", 200)
    assert [item["depId"] for item in served.body["items"]] == [fleet.deps["b"]]
    # The job pinned b through the second replica: the first one's heartbeat answer says so.
    wait_for(
        lambda: agent.heartbeat()[1]["pinnedDepIds"] == [fleet.deps["b"]],
        "the other replica's pin never showed",
    )
    # Re-registered through the second replica: the first refuses the old token.
    status, body = second.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "t", "instanceId": instance_id},
        {"X-DM-Secret": first.shared_secret},
    )
    assert status == 200, body
    wait_for(lambda: agent.heartbeat()[0] == 401, "the other replica's register never showed")
    assert agent.poll() == (401, WRONG_TOKEN)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_replica_that_starts_makes_the_others_forget(
    replicas: tuple[RunningServer, RunningServer], tmp_path: Path
) -> None:
    first, _second = replicas
    fleet = make_fleet(first)
    agent = fleet.register(fleet.add_instance("forgotten"), dynamic=[fleet.deps["b"]])
    assert served_by(first, "heartbeat", agent.heartbeat)[0] == "memo"
    # A replica's previous run may have died between a commit and its NOTIFY: the new
    # run's first word is "forget", and the first replica reads the database again.
    with run_replica(first, cwd=tmp_path):
        wait_for(
            lambda: served_by(first, "heartbeat", agent.heartbeat)[0] != "memo",
            "the new replica's x: never arrived",
        )
    assert served_by(first, "heartbeat", agent.heartbeat)[0] == "memo"
