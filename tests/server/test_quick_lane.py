"""The quick lane: agent requests the memos cannot answer, served by one or two statements.

Each test checks what the agent sees (the same answers as the handlers give) and
which path served it, through the server's own counters on `/metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.fleet import Agent, Fleet, make_fleet
from tests.support.server import RunningServer, run_replica

COUNTER_RE = re.compile(
    r'^depman_agent_(memo|quick)_answers_total\{endpoint="(\w+)"\} ([\d.]+)$', re.M
)


def answered(server: RunningServer) -> dict[tuple[str, str], float]:
    """(memo or quick, endpoint) → requests this server answered that way."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    return {(how, endpoint): float(n) for how, endpoint, n in COUNTER_RE.findall(text)}


def served_by(
    server: RunningServer, endpoint: str, call: Callable[[], tuple[int, Any]]
) -> tuple[str, tuple[int, Any]]:
    """Which path answered one call: "memo", "quick" or "handler"; and the answer."""
    before = answered(server)
    result = call()
    after = answered(server)
    for how in ("memo", "quick"):
        if after.get((how, endpoint), 0.0) > before.get((how, endpoint), 0.0):
            return how, result
    return "handler", result


def placed_agent(plane: RunningServer) -> tuple[Fleet, Agent, dict[str, Any]]:
    """An agent holding b, warmed (memos set), with a job needing a and b placed on it."""
    fleet = make_fleet(plane)
    agent = fleet.register(fleet.add_instance("quick"), dynamic=[fleet.deps["b"]])
    assert agent.heartbeat()[0] == 200
    assert agent.poll()[0] == 200
    status, job = fleet.submit(["a", "b"])
    assert status == 200 and job["instanceId"] == agent.instance_id, job
    return fleet, agent, job


def test_a_job_s_agent_traffic_takes_the_quick_lane(plane: RunningServer) -> None:
    fleet, agent, _job = placed_agent(plane)
    # The enqueue dropped the empty-queue memo: the poll reads the queue, outside FastAPI.
    how, (status, body) = served_by(plane, "queue", agent.poll)
    assert (how, status) == ("quick", 200)
    items = {item["depId"]: item for item in body["items"]}
    assert set(items) == {fleet.deps["a"], fleet.deps["b"]}
    assert items[fleet.deps["b"]]["op"] == "touch"
    assert body["pinnedDepIds"] == sorted([fleet.deps["a"], fleet.deps["b"]])

    download = items[fleet.deps["a"]]
    how, answer = served_by(plane, "status", lambda: agent.status(download, "running"))
    assert how == "quick"
    assert answer == (200, {"ok": True, "applied": True, "itemState": "running"})
    how, answer = served_by(plane, "status", lambda: agent.status(download, "succeeded"))
    assert how == "quick"
    assert answer == (200, {"ok": True, "applied": True, "itemState": "succeeded"})
    # Late and repeated reports are acknowledged and change nothing.
    how, answer = served_by(plane, "status", lambda: agent.status(download, "running"))
    assert how == "quick"
    assert answer == (200, {"ok": True, "applied": False, "itemState": "succeeded"})
    assert agent.status(download, "succeeded")[1]["applied"] is False
    stale = {**download, "itemId": f"{fleet.deps['a']}.99"}
    assert agent.status(stale, "succeeded")[1] == {
        "ok": True,
        "applied": False,
        "itemState": "succeeded",
    }
    unknown = {**download, "itemId": "no-such-dep.1", "depId": "no-such-dep"}
    assert agent.status(unknown, "running")[1] == {"ok": True, "applied": False, "itemState": None}
    assert agent.items()[fleet.deps["a"]]["state"] == "succeeded"

    # The pins changed: the memo went; an unchanged inventory is one UPDATE.
    how, answer = served_by(plane, "heartbeat", agent.heartbeat)
    assert how == "quick"
    pins = sorted([fleet.deps["a"], fleet.deps["b"]])
    assert answer == (200, {"ok": True, "pinnedDepIds": pins, "staticDepIds": []})
    how, _ = served_by(plane, "heartbeat", agent.heartbeat)
    assert how == "memo"


def test_the_quick_lane_leaves_what_it_does_not_take_to_the_handlers(
    plane: RunningServer,
) -> None:
    fleet, agent, job = placed_agent(plane)
    items = {item["depId"]: item for item in agent.poll()[1]["items"]}
    download = items[fleet.deps["a"]]
    # A failure re-places the job: the handler does that, in one transaction.
    how, (status, body) = served_by(
        plane, "status", lambda: agent.status(download, "failed", error="disk full")
    )
    assert (how, status, body["applied"]) == ("handler", 200, True)
    status, after = plane.admin("GET", f"/jobs/{job['jobId']}")
    assert status == 200 and after["history"][-1]["event"] in ("failed", "dep_failed")
    # A changed inventory is a diff, not an UPDATE of the row.
    agent.installed_dynamic = [fleet.deps["b"], fleet.deps["c"]]
    how, (status, _) = served_by(plane, "heartbeat", agent.heartbeat)
    assert (how, status) == ("handler", 200)
    # A token the server does not know: the handler refuses it.
    wrong = {"Authorization": "Bearer not-the-token"}
    path = f"/api/dependencies/queue?instanceId={agent.instance_id}&limit=25"
    how, (status, _) = served_by(plane, "queue", lambda: plane.request("GET", path, headers=wrong))
    assert (how, status) == ("handler", 401)
    report = {
        "instanceId": agent.instance_id,
        "itemId": download["itemId"],
        "depId": download["depId"],
        "op": "download",
        "state": "running",
    }
    how, (status, _) = served_by(
        plane, "status", lambda: plane.request("POST", "/api/dependencies/status", report, wrong)
    )
    assert (how, status) == ("handler", 401)


def test_a_quick_report_keeps_the_disk_figures(plane: RunningServer) -> None:
    fleet, agent, _job = placed_agent(plane)
    items = {item["depId"]: item for item in agent.poll()[1]["items"]}
    agent.free_bytes = 777_777
    how, _ = served_by(plane, "status", lambda: agent.status(items[fleet.deps["a"]], "running"))
    assert how == "quick"
    status, body = plane.admin("GET", f"/admin/instances/{agent.instance_id}")
    assert status == 200
    assert body["dependencyManager"]["diskStats"]["freeBytes"] == 777_777


@pytest.mark.postgres
def test_a_replica_that_starts_makes_the_others_forget(
    replicas: tuple[RunningServer, RunningServer], tmp_path: Path
) -> None:
    first, _second = replicas
    fleet = make_fleet(first)
    agent = fleet.register(fleet.add_instance("forgotten"), dynamic=[fleet.deps["b"]])
    assert agent.heartbeat()[0] == 200
    assert served_by(first, "heartbeat", agent.heartbeat)[0] == "memo"
    # A replica's previous run may have died between a commit and its NOTIFY: the new
    # run's first word is "forget", and the first replica reads the database again.
    with run_replica(first, cwd=tmp_path):
        deadline_checks = 200
        while served_by(first, "heartbeat", agent.heartbeat)[0] == "memo":
            deadline_checks -= 1
            assert deadline_checks > 0, "the new replica's x: never arrived"
    assert served_by(first, "heartbeat", agent.heartbeat)[0] == "memo"
