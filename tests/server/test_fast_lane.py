"""The agent fast lane: empty polls and unchanged heartbeats answered from memory, never wrongly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer, run_server

MEMO_RE = re.compile(r'^depman_agent_memo_answers_total\{endpoint="(\w+)"\} ([\d.]+)$', re.M)


def memo_answers(server: RunningServer) -> dict[str, float]:
    """How many agent requests this server answered from memory, per endpoint."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    return {endpoint: float(n) for endpoint, n in MEMO_RE.findall(text)}


def served_from_memory(server: RunningServer, endpoint: str, call: object) -> bool:
    """Whether one call (a no-argument callable) was answered by the fast lane."""
    before = memo_answers(server).get(endpoint, 0.0)
    status, _body = call()  # type: ignore[operator]
    assert status == 200
    return memo_answers(server).get(endpoint, 0.0) == before + 1


def warm(agent: Agent) -> None:
    """After register: one heartbeat through the handler leaves the memo."""
    assert agent.heartbeat()[0] == 200
    assert agent.poll()[0] == 200


def test_unchanged_heartbeat_and_empty_poll_come_from_memory(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("memo"), dynamic=[fleet.deps["b"]])
    warm(agent)
    assert served_from_memory(plane, "heartbeat", agent.heartbeat)
    assert served_from_memory(plane, "queue", agent.poll)
    # What the fast lane answers is what the handler answers.
    assert agent.heartbeat() == (200, {"ok": True, "pinnedDepIds": [], "staticDepIds": []})
    assert agent.poll() == (200, {"items": [], "pinnedDepIds": []})


def test_a_heartbeat_from_memory_is_written(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("written"), dynamic=[fleet.deps["b"]])
    warm(agent)
    first = plane.admin("GET", f"/admin/instances/{agent.instance_id}")[1]["dependencyManager"]
    time.sleep(0.01)
    assert served_from_memory(plane, "heartbeat", agent.heartbeat)
    status, body = plane.admin("GET", f"/admin/instances/{agent.instance_id}")
    assert status == 200
    dm = body["dependencyManager"]
    assert dm["lastHeartbeatAt"] > first["lastHeartbeatAt"]
    assert dm["installedDepIdsDynamic"] == [fleet.deps["b"]]


def test_new_disk_figures_are_written_before_the_answer(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("figures"), dynamic=[fleet.deps["b"]])
    warm(agent)
    # Placement ranks on free disk: a beat that reports new figures is not deferred.
    agent.free_bytes = 123_456
    assert not served_from_memory(plane, "heartbeat", agent.heartbeat)
    status, body = plane.admin("GET", f"/admin/instances/{agent.instance_id}")
    assert status == 200
    assert body["dependencyManager"]["diskStats"]["freeBytes"] == 123_456
    # The same figures again: from memory.
    assert served_from_memory(plane, "heartbeat", agent.heartbeat)


def test_what_memory_cannot_answer_goes_to_the_handler(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("slow"), dynamic=[fleet.deps["b"]])
    warm(agent)
    # A changed inventory, a download in progress, a new failure: the database must know now.
    agent.installed_dynamic = [fleet.deps["b"], fleet.deps["c"]]
    assert not served_from_memory(plane, "heartbeat", agent.heartbeat)
    assert not served_from_memory(
        plane, "heartbeat", lambda: agent.heartbeat(downloadingDepIds=[fleet.deps["a"]])
    )
    warm(agent)
    assert not served_from_memory(
        plane, "heartbeat", lambda: agent.heartbeat(failedDepIds=[fleet.deps["a"]])
    )
    # A long-poll and an odd query go to the handler too.
    assert not served_from_memory(plane, "queue", lambda: agent.poll(wait=0.1))
    before = memo_answers(plane).get("queue", 0.0)
    assert agent.poll(limit=5000)[0] == 422
    assert memo_answers(plane).get("queue", 0.0) == before


def test_bad_requests_get_the_handlers_errors_even_with_a_memo(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("guarded"), dynamic=[fleet.deps["b"]])
    other = fleet.register(fleet.add_instance("other"))
    warm(agent)
    path = f"/api/dependencies/queue?instanceId={agent.instance_id}&limit=25"
    assert plane.request("GET", path, headers={"Authorization": "Bearer nope"})[0] == 401
    assert plane.request("GET", path)[0] == 401
    assert plane.request("GET", path, headers=other.auth)[0] == 403
    hb = {"instanceId": agent.instance_id, "installedDynamicDepIds": [fleet.deps["b"]]}
    url = "/api/dependencies/heartbeat"
    assert plane.request("POST", url, hb, {"Authorization": "Bearer nope"})[0] == 401
    assert plane.request("POST", url, hb, other.auth)[0] == 403
    status, body = plane.request("POST", url, {**hb, "queueDepth": "many"}, agent.auth)
    assert status == 422 and body["error"]["code"] == "validation_failed"
    status, body = plane.request("POST", url, raw_body=b"{not json", headers=agent.auth)
    assert status == 422 and "error" in body


def test_reregister_voids_the_old_token_and_the_memo(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    instance_id = fleet.add_instance("rotated")
    old = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    warm(old)
    assert served_from_memory(plane, "heartbeat", old.heartbeat)
    new = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    assert old.heartbeat()[0] == 401
    assert old.poll()[0] == 401
    assert new.poll()[0] == 200


def test_pins_reach_the_next_heartbeat_from_memory(plane: RunningServer) -> None:
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("pinned"), dynamic=[fleet.deps["b"]])
    warm(agent)
    status, job = fleet.submit(["b"])
    assert status == 200 and job["instanceId"] == agent.instance_id
    pinned = {"ok": True, "pinnedDepIds": [fleet.deps["b"]], "staticDepIds": []}
    assert agent.heartbeat() == (200, pinned)
    assert served_from_memory(plane, "heartbeat", agent.heartbeat)
    assert agent.status(agent.poll()[1]["items"][0], "succeeded")[0] == 200  # the touch
    status, _ = plane.admin("POST", f"/jobs/{job['jobId']}/start", {})
    assert status == 200
    status, _ = plane.admin("POST", f"/jobs/{job['jobId']}/complete", {"ok": True})
    assert status == 200
    assert agent.heartbeat() == (200, {"ok": True, "pinnedDepIds": [], "staticDepIds": []})


def test_an_instance_that_went_stale_is_not_kept_live_by_memory(tmp_path: Path) -> None:
    env = {"DEPMAN_LIVE_TTL_SECONDS": "1"}
    with run_server(f"sqlite:///{tmp_path / 'ttl.db'}", cwd=tmp_path, extra_env=env) as server:
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("stale"), dynamic=[fleet.deps["b"]])
        warm(agent)
        time.sleep(1.2)
        # Past the live TTL: the handler decides (the instance becomes live again).
        assert not served_from_memory(server, "heartbeat", agent.heartbeat)


def test_write_behind_off_writes_every_heartbeat(tmp_path: Path) -> None:
    env = {"DEPMAN_HEARTBEAT_FLUSH_SECONDS": "0"}
    with run_server(f"sqlite:///{tmp_path / 'off.db'}", cwd=tmp_path, extra_env=env) as server:
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("off"))
        warm(agent)
        assert not served_from_memory(server, "heartbeat", agent.heartbeat)
        assert served_from_memory(server, "queue", agent.poll)


@pytest.mark.postgres
def test_memos_of_one_replica_follow_changes_made_through_another(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    fleet = make_fleet(first)
    instance_id = fleet.add_instance("replicated")
    agent = fleet.register(instance_id, dynamic=[fleet.deps["b"]])
    warm(agent)
    assert served_from_memory(first, "heartbeat", agent.heartbeat)
    # A job placed through B pins b: A's next heartbeat answer says so.
    status, job = second.admin(
        "POST", "/jobs", {"serverType": fleet.server_type, "depIds": [fleet.deps["b"]]}
    )
    assert status == 200 and job["instanceId"] == instance_id
    wait_for(lambda: agent.heartbeat()[1]["pinnedDepIds"] == [fleet.deps["b"]])
    # Re-registered through B: A refuses the old token.
    status, body = second.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "t", "instanceId": instance_id},
        {"X-DM-Secret": first.shared_secret},
    )
    assert status == 200, body
    wait_for(lambda: agent.heartbeat()[0] == 401)


def wait_for(check: object, timeout: float = 10.0) -> None:
    """Poll `check()` until true (NOTIFY takes milliseconds; a missed one, the memo's TTL)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the other replica's change never showed"
        time.sleep(0.05)
