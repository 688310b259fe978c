"""Operator actions through the admin API, seen by a later field agent (the v1 client)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.fleet import make_fleet
from tests.server.test_field_agents import field_agent, items_of, job_of
from tests.server.v1_client import V1Client
from tests.support.server import RunningServer


def act(server: RunningServer, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """An admin POST as the CLI sends it (with the actor header)."""
    return server.request(
        "POST",
        "/api" + path,
        body or {},
        {"Authorization": f"Bearer {server.admin_token}", "X-Depman-Actor": "alice@laptop"},
    )


def actions_of(server: RunningServer, **query: str) -> list[dict[str, Any]]:
    """The audit log."""
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = server.admin("GET", f"/admin/actions?{qs}")
    assert status == 200, body
    return list(body["actions"])


@pytest.mark.server_env(DEPMAN_JOB_MAX_PLACEMENTS="1")
def test_cancel_running_item_reaches_the_agent_which_reports_cancelled(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "cx", "0.9.14")
    _, job = fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    status, doc = act(
        server,
        f"/admin/queues/{client.instance_id}/items/{item['depId']}/cancel",
        {"reason": "wrong model"},
    )
    assert status == 200 and doc["state"] == "running" and doc["cancelReason"] == "wrong model"
    check = client.queue_item(item["itemId"])["item"]
    assert check["cancelReason"] == "wrong model"
    answer = client.status(
        item, "cancelled", f"Dependency queue item cancelled: {check['cancelReason']}"
    )
    assert answer["itemState"] == "cancelled"
    done = job_of(server, job["jobId"])
    assert done["state"] == "failed" and "wrong model" in done["error"]
    (entry,) = actions_of(server, instanceId=client.instance_id)
    assert entry["action"] == "cancel_item" and entry["actor"] == "api:alice@laptop"
    assert entry["depId"] == item["depId"] and entry["detail"]["reason"] == "wrong model"


def test_cancel_queued_item_ends_it_at_once(server: RunningServer) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "cq", "0.9.14")
    other = field_agent(server, fleet, "cq2", "0.9.14")
    _, job = fleet.submit(["c"])
    owner = client if job["instanceId"] == client.instance_id else other
    dep = fleet.deps["c"]
    status, doc = act(server, f"/admin/queues/{owner.instance_id}/items/{dep}/cancel", {})
    assert status == 200 and doc["state"] == "cancelled"
    assert owner.poll() == []
    # An agent backing off on it learns from its check before retrying: it drops it.
    check = owner.queue_item(doc["itemId"])["item"]
    assert check["state"] == "cancelled" and check["cancelReason"] == "cancelled by operator"
    moved = job_of(server, job["jobId"])  # the failure policy ran: placed on the other one
    assert moved["instanceId"] != owner.instance_id and moved["state"] == "waiting_deps"
    status, body = act(server, f"/admin/queues/{owner.instance_id}/items/{dep}/cancel", {})
    assert status == 409 and body["error"]["code"] == "invalid_transition"
    status, body = act(server, f"/admin/queues/{owner.instance_id}/items/nope/cancel", {})
    assert status == 404


def test_retry_failed_item_now_hands_it_out_with_force_retry(server: RunningServer) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "rt", "0.9.18")
    fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    client.status(item, "failed", "HTTP 403 from origin")
    status, doc = act(
        server, f"/admin/queues/{client.instance_id}/items/{item['depId']}/retry", {"afterMs": 500}
    )
    assert status == 200 and doc["state"] == "queued" and doc["forceRetry"] is True
    (again,) = client.poll()
    assert again["itemId"] != item["itemId"]
    assert again["forceRetry"] is True and again["forceRetryAfterMs"] == 500
    # A late failure of the old generation now tells the agent to forget it.
    assert client.status(item, "failed", "HTTP 403 from origin")["clearFailedDepId"] is True
    client.status(again, "running")
    client.installed_dynamic.append(again["depId"])
    client.status(again, "succeeded")
    assert items_of(server, client.instance_id)[again["depId"]]["forceRetry"] is False
    status, _ = act(server, f"/admin/queues/{client.instance_id}/items/{item['depId']}/retry")
    assert status == 409


def test_delete_dep_static_needs_force_and_agent_removes_it(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    instance_id = fleet.add_instance("del")
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    client.register(instance_id=instance_id, agent_version="0.9.15")
    client.heartbeat()
    client.run_once()
    fleet.submit(["b"])
    client.run_once()
    static, dynamic = fleet.deps["a"], fleet.deps["b"]
    status, body = act(server, f"/admin/instances/{instance_id}/deps/{static}/delete")
    assert status == 409 and "force" in body["error"]["message"]
    status, doc = act(
        server, f"/admin/instances/{instance_id}/deps/{static}/delete", {"force": True}
    )
    assert status == 200 and doc["op"] == "delete" and doc["state"] == "queued"
    (item,) = client.poll()
    assert item["op"] == "delete"
    assert item["resolved"]["destRelativePath"].endswith(".safetensors")
    client.status(item, "running")
    client.installed_static.remove(static)
    client.status(item, "succeeded")
    client.heartbeat()
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert inst["dependencyManager"]["installedDepIdsStatic"] == []
    assert client.poll() == []  # the profile's prefetch does not undo the operator's delete
    assert inst["dependencyManager"]["installedDepIdsDynamic"] == [dynamic]
    logged = [a["action"] for a in actions_of(server, instanceId=instance_id)]
    assert logged == ["delete_dep"]


def test_drain_places_no_new_jobs_and_cancel_job(server: RunningServer) -> None:
    fleet = make_fleet(server)
    first = field_agent(server, fleet, "dr1", "0.10.0")
    _, running = fleet.submit(["b"])
    assert running["instanceId"] == first.instance_id
    status, doc = act(server, f"/admin/instances/{first.instance_id}/drain", {"drained": True})
    assert status == 200 and doc["drained"] is True
    # Its job finishes there.
    first.run_once()
    assert job_of(server, running["jobId"])["state"] == "ready"
    assert server.admin("POST", f"/jobs/{running['jobId']}/start", {})[0] == 200
    assert server.admin("POST", f"/jobs/{running['jobId']}/complete", {"ok": True})[0] == 200
    # No new job is placed on it, though it is live and free.
    _, waiting = fleet.submit(["c"])
    assert waiting["state"] == "pending"
    status, cancelled = act(
        server, f"/admin/jobs/{waiting['jobId']}/cancel", {"reason": "not needed"}
    )
    assert status == 200 and cancelled["state"] == "failed"
    assert "not needed" in cancelled["error"]
    assert cancelled["history"][-2]["event"] == "cancelled"
    status, _ = act(server, f"/admin/jobs/{waiting['jobId']}/cancel", {})
    assert status == 409
    act(server, f"/admin/instances/{first.instance_id}/drain", {"drained": False})
    _, placed = fleet.submit(["c"])
    assert placed["instanceId"] == first.instance_id
    log = actions_of(server, instanceId=first.instance_id)
    assert [a["action"] for a in log] == ["undrain", "drain"]
    assert [a["action"] for a in actions_of(server, jobId=waiting["jobId"])] == ["cancel_job"]


@pytest.mark.server_env(
    DEPMAN_RUNNING_TIMEOUT_SECONDS="1",
    DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.2",
    DEPMAN_JOB_MAX_PLACEMENTS="1",
)
def test_cancelled_running_item_of_a_silent_agent_ends_cancelled(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "quiet", "0.3.0")  # never checks its items
    _, job = fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    act(
        server,
        f"/admin/queues/{client.instance_id}/items/{item['depId']}/cancel",
        {"reason": "stuck"},
    )
    done = job_of(server, job["jobId"], seen="waiting_deps")
    assert done["state"] == "failed" and "stuck" in done["error"]
    assert items_of(server, client.instance_id)[item["depId"]]["state"] == "cancelled"
    assert client.poll() == []  # never handed out again
