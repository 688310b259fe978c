"""Profile changes reach running instances; failed static downloads are retried with backoff."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer


def put_profile(server: RunningServer, profile_id: str, static: list[str], prefetch: bool) -> None:
    body = {"staticDepIds": static, "prefetchOnBoot": prefetch, "dynamicPolicy": {}}
    status, answer = server.admin("PUT", f"/admin/profiles/{profile_id}", body)
    assert status == 200, answer


def beat_until_memo(agent: Agent) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    for _ in range(3):
        status, answer = agent.heartbeat()
        assert status == 200, answer
    return answer


def test_a_profile_change_reaches_running_instances_within_one_heartbeat(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    a, b, c = fleet.deps["a"], fleet.deps["b"], fleet.deps["c"]
    agent = fleet.register(fleet.add_instance("reconciled"), static=[a])
    assert beat_until_memo(agent)["staticDepIds"] == [a]
    assert agent.poll()[1]["items"] == []
    # Added: queued at prefetch priority on the running instance, and the heartbeat
    # answer (memo'd before the change) names the new list.
    put_profile(server, fleet.profile_id, [a, b], prefetch=True)
    items = agent.poll()[1]["items"]
    assert [(i["depId"], i["op"]) for i in items] == [(b, "download")]
    assert agent.items()[b]["priority"] == 1
    assert agent.heartbeat()[1]["staticDepIds"] == [a, b]
    # Removed: the agent learns it is no longer static (so it may evict it).
    put_profile(server, fleet.profile_id, [b], prefetch=True)
    assert agent.heartbeat()[1]["staticDepIds"] == [b]
    # A server type moved to another profile follows that one.
    other = f"{fleet.profile_id}-other"
    put_profile(server, other, [c], prefetch=True)
    status, _ = server.admin(
        "PUT",
        f"/admin/server-types/{fleet.server_type}",
        {"modelManagement": {"mode": "dependency_manager_v1", "profileId": other}},
    )
    assert status == 200
    assert beat_until_memo(agent)["staticDepIds"] == [c]
    assert c in {i["depId"] for i in agent.poll()[1]["items"]}


def test_a_profile_that_does_not_prefetch_queues_nothing(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=False)
    agent = fleet.register(fleet.add_instance("lazy"))
    put_profile(server, fleet.profile_id, [fleet.deps["a"], fleet.deps["b"]], prefetch=False)
    assert agent.poll()[1]["items"] == []
    assert agent.heartbeat()[1]["staticDepIds"] == [fleet.deps["a"], fleet.deps["b"]]


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


RETRY_ENV = {
    "DEPMAN_RETRY_BACKOFF_SECONDS": "1",
    "DEPMAN_RETRY_BACKOFF_MAX_SECONDS": "1.5",
    "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.2",
}


@pytest.mark.server_env(**RETRY_ENV)
def test_a_failed_static_download_is_retried_with_backoff(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    a = fleet.deps["a"]
    agent = fleet.register(fleet.add_instance("retried"))
    delays = []
    for generation in (1, 2, 3):
        item = wait_for_item(agent, f"{a}.{generation}")
        assert agent.status(item, "failed", "origin answered 503")[0] == 200
        listed = agent.items()[a]
        assert listed["state"] == "failed" and listed["failures"] == generation
        delays.append(
            (stamp(listed["nextAttemptAt"]) - stamp(listed["finishedAt"])).total_seconds()
        )
    assert delays == [1.0, 1.5, 1.5]  # 1 s doubling, capped at 1.5 s
    # A success ends the series; a job's failed download is not retried here.
    item = wait_for_item(agent, f"{a}.4")
    agent.status(item, "succeeded")
    assert agent.items()[a]["failures"] == 0 and agent.items()[a]["nextAttemptAt"] is None


def wait_for_item(agent: Agent, item_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll (as an agent does) until the item is handed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = agent.poll(wait=1)
        assert status == 200, body
        for item in body["items"]:
            if item["itemId"] == item_id:
                return dict(item)
    raise AssertionError(f"{item_id} was never handed out: {agent.items()}")
