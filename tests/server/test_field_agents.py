"""Later field agents (0.3 → 0.10, shared/docs/field-agents.md) against depman, unmodified.

Each test drives the v1 client the way a later agent behaves and asserts what
happens to the job, not only the status code.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.fleet import Fleet, make_fleet
from tests.server.v1_client import V1Client, V1Error
from tests.support.server import RunningServer

BACKOFF_ERROR = "Backoff active for {dep}; next attempt in ~{seconds}s. Last error: HTTP 503"


def field_agent(server: RunningServer, fleet: Fleet, name: str, version: str) -> V1Client:
    """A registered later agent with its first heartbeat sent."""
    instance_id = fleet.add_instance(name)
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    client.register(instance_id=instance_id, agent_version=version)
    client.heartbeat()
    return client


def job_of(server: RunningServer, job_id: str, seen: str | None = None) -> dict[str, Any]:
    """The job; with `seen`, wait (long-poll) until its state differs."""
    path = f"/jobs/{job_id}"
    if seen is not None:
        path += f"?waitSeconds=20&seenState={seen}"
    status, body = server.admin("GET", path)
    assert status == 200, body
    return dict(body)


def items_of(server: RunningServer, instance_id: str) -> dict[str, dict[str, Any]]:
    """The admin view of an instance's queue, by dep id."""
    status, body = server.admin("GET", f"/admin/queues/{instance_id}/items")
    assert status == 200, body
    return {item["depId"]: item for item in body["items"]}


def fail_attempt(client: V1Client, item: dict[str, Any], seconds: int = 120) -> dict[str, Any]:
    """One attempt that ran and failed retryably: running, then retrying."""
    client.status(item, "running")
    error = BACKOFF_ERROR.format(dep=item["depId"], seconds=seconds)
    return client.status(item, "retrying", error)


@pytest.mark.server_env(DEPMAN_MAX_ITEM_ATTEMPTS="2", DEPMAN_JOB_MAX_PLACEMENTS="2")
def test_retrying_counts_attempts_then_replaces_then_fails_the_job(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    agents = {
        c.instance_id: c
        for c in (
            field_agent(server, fleet, "fa1", "0.3.0"),
            field_agent(server, fleet, "fa2", "0.9.20"),
        )
    }
    status, job = fleet.submit(["b"])
    assert status == 200, job
    dep = fleet.deps["b"]
    first = agents[job["instanceId"]]
    (item,) = first.poll()
    answer = fail_attempt(first, item)
    assert answer["applied"] is True and "clearFailedDepId" not in answer
    seen = items_of(server, first.instance_id)[dep]
    assert seen["state"] == "queued" and seen["attempts"] == 1
    assert "HTTP 503" in seen["error"] and seen["nextAttemptAt"]
    assert first.poll() == []  # backing off: not handed out again on every poll
    assert job_of(server, job["jobId"])["state"] == "waiting_deps"
    # Its local retry: the check says queued, then the attempt fails again.
    assert first.queue_item(item["itemId"])["item"]["state"] == "queued"
    fail_attempt(first, item)
    moved = job_of(server, job["jobId"])
    assert moved["state"] == "waiting_deps" and moved["instanceId"] != first.instance_id
    assert [h["event"] for h in moved["history"]].count("dep_failed") == 1
    assert items_of(server, first.instance_id)[dep]["state"] == "failed"
    second = agents[moved["instanceId"]]
    (item2,) = second.poll()
    fail_attempt(second, item2)
    second.queue_item(item2["itemId"])
    fail_attempt(second, item2, seconds=240)
    done = job_of(server, job["jobId"])
    assert done["state"] == "failed"
    assert dep in done["error"] and "HTTP 503" in done["error"]


@pytest.mark.server_env(
    DEPMAN_ITEM_RETRY_WINDOW_SECONDS="1",
    DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.2",
    DEPMAN_JOB_MAX_PLACEMENTS="1",
)
def test_dep_failing_past_the_retry_window_fails_the_job(server: RunningServer) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "win", "0.5.0")
    _, job = fleet.submit(["c"])
    (item,) = client.poll()
    fail_attempt(client, item, seconds=600)
    client.heartbeat(failed=[item["depId"]])  # it keeps failing, listed in every heartbeat
    done = job_of(server, job["jobId"], seen="waiting_deps")
    assert done["state"] == "failed"
    assert "HTTP 503" in done["error"]
    assert items_of(server, client.instance_id)[item["depId"]]["state"] == "failed"


@pytest.mark.server_env(DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.2")
def test_backoff_ends_at_the_announced_time_and_the_item_comes_back(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "bo", "0.3.0")
    fleet.submit(["b"])
    (item,) = client.poll()
    fail_attempt(client, item, seconds=1)
    assert client.poll() == []
    path = f"/api/dependencies/queue?instanceId={client.instance_id}&limit=25&waitSeconds=20"
    status, body = server.request(
        "GET", path, headers={"Authorization": f"Bearer {client.token}"}
    )
    assert status == 200 and [i["itemId"] for i in body["items"]] == [item["itemId"]]
    # The retry runs and succeeds: the job becomes ready.
    client.status(item, "running")
    client.installed_dynamic.append(item["depId"])
    client.status(item, "succeeded")
    client.heartbeat()
    assert items_of(server, client.instance_id)[item["depId"]]["state"] == "succeeded"


@pytest.mark.server_env(DEPMAN_JOB_MAX_PLACEMENTS="1")
def test_cancelled_report_is_accepted_and_runs_the_failure_policy(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "can", "0.9.14")
    _, job = fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    answer = client.status(item, "cancelled", "Dependency queue item cancelled: operator")
    assert answer["applied"] is True and answer["itemState"] == "cancelled"
    done = job_of(server, job["jobId"])
    assert done["state"] == "failed" and "cancelled" in done["error"]


def test_agent_backing_off_on_a_fresh_item_is_told_to_clear_its_failure(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "clr", "0.10.105")
    fleet.submit(["b"])
    (item,) = client.poll()
    # Still in its local backoff from an earlier failure: it does not even start.
    answer = client.status(item, "retrying", BACKOFF_ERROR.format(dep=item["depId"], seconds=90))
    assert answer["clearFailedDepId"] is True
    seen = items_of(server, client.instance_id)[item["depId"]]
    assert seen["state"] == "queued" and seen["attempts"] == 0
    assert [i["itemId"] for i in client.poll()] == [item["itemId"]]


def test_late_failure_of_a_requeued_dep_answers_clear_failed(server: RunningServer) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "late", "0.10.105")
    fleet.submit(["c"])
    (item,) = client.poll()
    client.status(item, "running")
    client.status(item, "failed", "Download domain not allowed: example.org")
    fleet.submit(["c"])  # needs the dep again: a new generation is queued
    (again,) = client.poll()
    assert again["itemId"] != item["itemId"]
    answer = client.status(item, "failed", "Download domain not allowed: example.org")
    assert answer["applied"] is False and answer["clearFailedDepId"] is True


def test_queue_item_check_answers_own_items_and_404_exists_false(server: RunningServer) -> None:
    fleet = make_fleet(server)
    client = field_agent(server, fleet, "qi", "0.9.14")
    other = field_agent(server, fleet, "qi-other", "0.9.14")
    _, job = fleet.submit(["b"])
    owner, stranger = (
        (client, other) if job["instanceId"] == client.instance_id else (other, client)
    )
    (item,) = owner.poll()
    answer = owner.queue_item(item["itemId"])["item"]
    assert answer["itemId"] == item["itemId"] and answer["state"] == "queued"
    assert answer["cancelReason"] is None and answer["forceRetry"] is False
    assert "forceRetryAfterMs" in answer
    assert answer["resolved"]["destRelativePath"] == item["resolved"]["destRelativePath"]
    for missing in (f"{item['depId']}.99", "nope.1", "no-generation"):
        with pytest.raises(V1Error) as caught:
            owner.queue_item(missing)
        assert caught.value.status == 404
        assert '"exists":false' in str(caught.value).replace(" ", "")
    with pytest.raises(V1Error) as caught:
        stranger._call(
            "GET",
            f"/dependencies/queue-item?instanceId={owner.instance_id}&itemId={item['itemId']}",
            None,
            stranger._auth(),
        )
    assert caught.value.status == 403
    with pytest.raises(V1Error) as caught:
        owner._call(
            "GET",
            f"/dependencies/queue-item?instanceId={owner.instance_id}&itemId={item['itemId']}",
            None,
            {},
        )
    assert caught.value.status == 401


def test_agent_job_channel_answers_404(server: RunningServer) -> None:
    for method in ("POST", "GET"):
        status, body = server.request(
            method,
            "/api/agent/register",
            {"instanceId": "x", "agentVersion": "0.10.147"} if method == "POST" else None,
            {"X-DM-Secret": server.shared_secret},
        )
        assert status == 404
        assert body["error"]["code"] == "not_found"


def test_progress_names_and_telemetry_are_kept_and_shown(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("tele")
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    client.register(
        instance_id=instance_id,
        agent_version="0.9.20",
        provider="vast",
        providerMetadata={"vastContractId": "123456", "machineId": "m-9"},
    )
    client.heartbeat()
    _, job = fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    row = {
        "depId": item["depId"],
        "stage": "downloading",
        "downloadedBytes": 500,
        "expectedBytes": 2000,
        "throughputBytesPerSec": 250.0,
        "startedAtMs": 1_700_000_000_000,
        "updatedAtMs": 1_700_000_002_000,
        "tool": "aria2c",
        "destRelativePath": item["resolved"]["destRelativePath"],
    }
    diagnostics = {"mount": "/workspace", "filesystem": "overlay", "deletedOpenBytes": 4096}
    disk = {**client.disk(), "path": "/workspace/ComfyUI", "statPath": "/workspace"}
    client.heartbeat(
        downloading=[item["depId"]],
        activeDownloads=[row],
        diskDiagnostics=diagnostics,
        diskStats=disk,
    )
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    dm = inst["dependencyManager"]
    assert dm["activeDownloads"] == [row]
    assert dm["diskDiagnostics"] == diagnostics and dm["diskStats"]["path"] == disk["path"]
    assert inst["provider"] == "vast" and inst["providerMetadata"]["vastContractId"] == "123456"
    status, page = server.request(
        "GET",
        f"/instances/{instance_id}",
        headers={"Authorization": f"Bearer {server.admin_token}", "Accept": "text/html"},
    )
    assert status == 200
    for shown in ("vast", "vastContractId", "/workspace/ComfyUI", "deletedOpenBytes", "aria2c"):
        assert shown in page, shown
    assert 'aria-valuenow="25.0"' in page  # 500 of 2000 bytes, as for depman's own agent
    # depman's old names are still read, stored in the one vocabulary.
    old = {"depId": item["depId"], "bytesDone": 1000, "bytesTotal": 2000, "bytesPerSecond": 10}
    client.heartbeat(downloading=[item["depId"]], activeDownloads=[old])
    client.heartbeat(downloading=[item["depId"]], activeDownloads=[old])
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    dm = inst["dependencyManager"]
    assert dm["activeDownloads"] == [
        {
            "depId": item["depId"],
            "downloadedBytes": 1000,
            "expectedBytes": 2000,
            "throughputBytesPerSec": 10,
        }
    ]
    # Heartbeats without telemetry keep what was reported.
    assert dm["diskDiagnostics"] == diagnostics and dm["diskStats"]["path"] == disk["path"]
    assert job_of(server, job["jobId"])["state"] == "waiting_deps"
