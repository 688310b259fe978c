"""Receipts, readiness from receipts, and `touch` proving presence, through every answer path."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.server.fleet import Agent, Fleet, make_fleet
from tests.support.server import RunningServer


def receipt(fleet: Fleet, name: str, *, sha256: str | None = None, **extra: Any) -> dict[str, Any]:
    """A receipt as depman's agent sends it for the dep `name` of `make_fleet`."""
    dep_id = fleet.deps[name]
    doc: dict[str, Any] = {
        "algorithm": "sha256",
        "sha256": sha256 or hashlib.sha256(dep_id.encode()).hexdigest(),
        "sizeBytes": {"a": 1000, "b": 2000, "c": 3000}[name],
        "mtimeNs": "1764806400123456789",
        "verifiedAtMs": 1764806400123,
        "destRelativePath": f"models/loras/{dep_id}.safetensors",
        "finalPathVerified": True,
        "agentVersion": "depman-agent/test",
    }
    doc.update(extra)
    return doc


def succeed(agent: Agent, item: dict[str, Any], verification: dict[str, Any] | None) -> Any:
    body = {
        "instanceId": agent.instance_id,
        "itemId": item["itemId"],
        "depId": item["depId"],
        "op": item["op"],
        "state": "succeeded",
    }
    if verification is not None:
        body["verification"] = verification
    status, answer = agent.server.request("POST", "/api/dependencies/status", body, agent.auth)
    assert status == 200, answer
    return answer


def job_state(server: RunningServer, job_id: str) -> dict[str, Any]:
    status, job = server.admin("GET", f"/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


def inventory(server: RunningServer, instance_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, body
    return dict(body["dependencyManager"])


def warm(agent: Agent) -> None:
    """Heartbeat until the replica answers this inventory from its memo."""
    for _ in range(3):
        assert agent.heartbeat()[0] == 200


def test_a_matching_receipt_makes_the_job_ready_at_once(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("receipt"))
    warm(agent)
    _, job = fleet.submit(["b"])
    assert job["state"] == "waiting_deps" and job["missingDepIds"] == [fleet.deps["b"]]
    item = agent.poll()[1]["items"][0]
    agent.status(item, "running")
    answer = succeed(agent, item, receipt(fleet, "b"))
    assert answer == {"ok": True, "applied": True, "itemState": "succeeded"}
    # No heartbeat came: the receipt alone proved the file.
    ready = job_state(server, job["jobId"])
    assert ready["state"] == "ready" and ready["missingDepIds"] == []
    dm = inventory(server, agent.instance_id)
    assert dm["installedDepIdsDynamic"] == [fleet.deps["b"]]
    [kept] = dm["receipts"]
    assert kept["depId"] == fleet.deps["b"] and kept["matchesCatalog"] is True
    assert kept["mtimeNs"] == "1764806400123456789" and kept["sizeBytes"] == 2000
    assert kept["verifiedAt"].startswith("2025-12-04T00:00:00.123")
    assert kept["agentVersion"] == "depman-agent/test" and kept["itemId"] == item["itemId"]
    # The heartbeat stays the truth: one that does not list the dep removes it, even
    # though the memo'd digest of this instance predates the receipt.
    assert agent.heartbeat()[0] == 200
    assert inventory(server, agent.instance_id)["installedDepIdsDynamic"] == []
    agent.installed_dynamic = [fleet.deps["b"]]
    assert agent.heartbeat()[0] == 200
    assert inventory(server, agent.instance_id)["installedDepIdsDynamic"] == [fleet.deps["b"]]


def test_a_receipt_that_does_not_match_proves_nothing(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("mismatch"))
    _, job = fleet.submit(["b", "c"])
    items = {i["depId"]: i for i in agent.poll()[1]["items"]}
    # Wrong digest; a size-only check of a dep the catalog pins by sha256; another path.
    succeed(agent, items[fleet.deps["b"]], receipt(fleet, "b", sha256="0" * 64))
    size_only = {**receipt(fleet, "c", algorithm="size"), "sha256": None}
    succeed(agent, items[fleet.deps["c"]], size_only)
    assert job_state(server, job["jobId"])["state"] == "waiting_deps"
    receipts = {r["depId"]: r for r in inventory(server, agent.instance_id)["receipts"]}
    assert [r["matchesCatalog"] for r in receipts.values()] == [False, False]
    assert inventory(server, agent.instance_id)["installedDepIdsDynamic"] == []
    # The heartbeat decides, as for an agent that sends no receipt.
    agent.installed_dynamic = [fleet.deps["b"], fleet.deps["c"]]
    agent.heartbeat()
    assert job_state(server, job["jobId"])["state"] == "ready"


def test_a_v1_success_without_receipt_waits_for_the_heartbeat(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("v1"))
    _, job = fleet.submit(["b"])
    item = agent.poll()[1]["items"][0]
    succeed(agent, item, None)
    waiting = job_state(server, job["jobId"])
    assert waiting["state"] == "waiting_deps" and waiting["missingDepIds"] == [fleet.deps["b"]]
    assert agent.items()[fleet.deps["b"]]["generation"] == 1  # not queued again
    agent.installed_dynamic = [fleet.deps["b"]]
    agent.heartbeat()
    assert job_state(server, job["jobId"])["state"] == "ready"
    assert inventory(server, agent.instance_id)["receipts"] == []


def test_a_size_receipt_proves_a_dep_the_catalog_has_no_sha256_for(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    dep_id = fleet.deps["b"]
    status, doc = server.admin("GET", f"/admin/deps/{dep_id}")
    assert status == 200
    doc = {k: v for k, v in doc.items() if k not in ("depId", "updatedAt")}
    doc["sha256"] = None
    assert server.admin("PUT", f"/admin/deps/{dep_id}", doc)[0] == 200
    size_only = {**receipt(fleet, "b", algorithm="size"), "sha256": None}
    wrong = fleet.register(fleet.add_instance("wrongsize"))
    _, first = fleet.submit(["b"])
    succeed(wrong, wrong.poll()[1]["items"][0], {**size_only, "sizeBytes": 1999})
    assert job_state(server, first["jobId"])["state"] == "waiting_deps"
    right = fleet.register(fleet.add_instance("rightsize"))
    _, second = fleet.submit(["b"])
    assert second["instanceId"] == right.instance_id
    succeed(right, right.poll()[1]["items"][0], size_only)
    assert job_state(server, second["jobId"])["state"] == "ready"


def test_a_touched_dep_counts_only_after_its_touch_succeeded(server: RunningServer) -> None:
    fleet = make_fleet(server)
    c = fleet.deps["c"]
    agent = fleet.register(fleet.add_instance("touch"), dynamic=[c])
    warm(agent)
    _, job = fleet.submit(["c"])
    # Held per the inventory, but a heartbeat may be stale: the job waits for the touch.
    assert job["state"] == "waiting_deps" and job["missingDepIds"] == [c]
    warm(agent)
    assert job_state(server, job["jobId"])["state"] == "waiting_deps"
    touch = agent.poll()[1]["items"][0]
    assert touch["op"] == "touch"
    # The agent did not find the file: a download is queued at once, and the job waits.
    assert agent.status(touch, "failed", "file missing at models/loras")[0] == 200
    waiting = job_state(server, job["jobId"])
    assert waiting["state"] == "waiting_deps" and waiting["instanceId"] == agent.instance_id
    download = agent.poll()[1]["items"][0]
    assert (download["op"], download["itemId"]) == ("download", f"{c}.2")
    agent.installed_dynamic = []
    agent.heartbeat()  # the agent's next heartbeat no longer lists it either
    assert job_state(server, job["jobId"])["state"] == "waiting_deps"
    succeed(agent, download, receipt(fleet, "c"))
    assert job_state(server, job["jobId"])["state"] == "ready"


def test_a_touch_that_succeeded_makes_the_job_ready(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("touched"), dynamic=[fleet.deps["c"]])
    _, job = fleet.submit(["c"])
    touch = agent.poll()[1]["items"][0]
    succeed(agent, touch, receipt(fleet, "c"))
    assert job_state(server, job["jobId"])["state"] == "ready"
