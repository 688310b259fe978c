"""Agent protocol v1: register, queue, status, heartbeat, auth rules, long-poll, pins."""

from __future__ import annotations

import threading
import time

from tests.server.fleet import make_fleet
from tests.support.server import RunningServer


def test_register_by_id_and_ip_answers_token_profile_capabilities(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=False)
    instance_id = fleet.add_instance("reg", ip="10.9.8.7")
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "v1", "instanceIp": "10.9.8.7"},
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, body
    assert body["instanceId"] == instance_id
    assert len(body["agentToken"]) >= 32
    assert body["profile"]["staticDepIds"] == [fleet.deps["a"]]
    assert body["profile"]["dynamicPolicy"] == {"enabled": True, "minFreeBytes": 1024}
    assert body["capabilities"]["longPoll"] is True


def test_register_by_ip_alone_unknown_is_404_naming_both_fixes(server: RunningServer) -> None:
    fleet = make_fleet(server)
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "v1", "instanceIp": "10.99.0.1"},
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 404
    assert body["error"]["code"] == "instance_not_found"
    assert "DM_INSTANCE_ID" in body["error"]["message"]
    assert "depman apply" in body["error"]["message"]


def test_register_with_wrong_or_missing_secret_is_401(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("sec")
    body = {"serverType": fleet.server_type, "agentVersion": "v1", "instanceId": instance_id}
    for headers in ({"X-DM-Secret": "wrong"}, {}):
        status, answer = server.request("POST", "/api/dependencies/register", body, headers)
        assert status == 401
        assert answer["error"]["code"] == "unauthorized"


def test_token_of_instance_a_cannot_touch_instance_b(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent_a = fleet.register(fleet.add_instance("a"))
    agent_b = fleet.register(fleet.add_instance("b"))
    status, _ = server.request(
        "GET",
        f"/api/dependencies/queue?instanceId={agent_b.instance_id}&limit=25",
        headers=agent_a.auth,
    )
    assert status == 403
    hb = {"instanceId": agent_b.instance_id, "installedStaticDepIds": []}
    status, body = server.request("POST", "/api/dependencies/heartbeat", hb, agent_a.auth)
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    st = {"instanceId": agent_b.instance_id, "itemId": "x.1", "state": "running"}
    status, _ = server.request("POST", "/api/dependencies/status", st, agent_a.auth)
    assert status == 403


def test_unknown_or_missing_token_is_401_and_reregister_rotates(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("tok")
    agent = fleet.register(instance_id)
    path = f"/api/dependencies/queue?instanceId={instance_id}&limit=25"
    assert server.request("GET", path)[0] == 401
    assert server.request("GET", path, headers={"Authorization": "Bearer nope"})[0] == 401
    assert server.request("GET", path, headers={"Authorization": "Basic abc"})[0] == 401
    old = agent.token
    fresh = fleet.register(instance_id)
    assert fresh.token != old
    assert server.request("GET", path, headers=fresh.auth)[0] == 200


def test_prefetch_on_boot_queues_missing_static_deps(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a", "b"], prefetch=True)
    agent = fleet.register(fleet.add_instance("pre"))
    status, body = agent.poll()
    assert status == 200
    assert [i["depId"] for i in body["items"]] == [fleet.deps["a"], fleet.deps["b"]]
    item = body["items"][0]
    assert item["op"] == "download"
    assert item["itemId"] == f"{fleet.deps['a']}.1"
    assert item["resolved"]["destRelativePath"].startswith("models/")
    assert set(item["resolved"]) >= {
        "url",
        "auth",
        "destRelativePath",
        "sha256",
        "expectedSizeBytes",
        "kind",
    }
    # An instance that already holds a static dep is not asked for it again.
    a, b = fleet.deps["a"], fleet.deps["b"]
    held = fleet.register(fleet.add_instance("pre-held"), static=[a])
    fleet.register(held.instance_id, static=[a])
    items = held.items()
    assert items[a]["state"] == "succeeded" and items[a]["generation"] == 1
    assert items[b]["state"] == "queued" and items[b]["generation"] == 1


def test_status_is_idempotent_and_monotonic(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    agent = fleet.register(fleet.add_instance("mono"))
    item = agent.poll()[1]["items"][0]
    dep = item["depId"]
    for _ in range(2):
        assert agent.status(item, "running")[0] == 200
    assert agent.items()[dep]["state"] == "running"
    assert agent.status(item, "succeeded")[1]["applied"] is True
    status, body = agent.status(item, "running")  # late running: acknowledged, ignored
    assert status == 200 and body["applied"] is False
    assert agent.items()[dep]["state"] == "succeeded"
    assert agent.status(item, "failed", "late")[1]["applied"] is False
    assert agent.items()[dep]["state"] == "succeeded"
    # An itemId of another generation or unknown dep is acknowledged and ignored.
    stale = dict(item, itemId=f"{dep}.99")
    assert agent.status(stale, "failed", "x") == (
        200,
        {"ok": True, "applied": False, "itemState": "succeeded"},
    )
    # An itemId not of the form <depId>.<generation> is malformed: refused.
    assert agent.status(dict(item, itemId="garbage"), "running")[0] == 422


def test_succeeded_after_failed_is_accepted(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    agent = fleet.register(fleet.add_instance("saf"))
    item = agent.poll()[1]["items"][0]
    agent.status(item, "running")
    agent.status(item, "failed", "HTTP 503 " + "x" * 800)
    failed = agent.items()[item["depId"]]
    assert failed["state"] == "failed" and len(failed["error"]) <= 500
    assert agent.status(item, "succeeded")[1]["applied"] is True
    assert agent.items()[item["depId"]]["state"] == "succeeded"


def test_heartbeat_inventory_completes_queued_download_and_shows_in_admin(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, static=["a", "b"], prefetch=True)
    agent = fleet.register(fleet.add_instance("inv"))
    agent.installed_static = [fleet.deps["a"]]
    agent.installed_dynamic = ["unknown-to-catalog"]
    status, body = agent.heartbeat(downloadingDepIds=[fleet.deps["b"]], queueDepth=1)
    assert status == 200 and body["pinnedDepIds"] == []
    items = agent.items()
    assert items[fleet.deps["a"]]["state"] == "succeeded"
    assert items[fleet.deps["b"]]["state"] == "queued"
    status, inst = server.admin("GET", f"/admin/instances/{agent.instance_id}")
    dm = inst["dependencyManager"]
    assert dm["installedDepIdsStatic"] == [fleet.deps["a"]]
    assert dm["installedDepIdsDynamic"] == ["unknown-to-catalog"]
    assert dm["downloadingDepIds"] == [fleet.deps["b"]]
    assert dm["queueDepth"] == 1 and dm["agentVersion"] == "test/1"
    assert dm["diskStats"]["freeBytes"] == agent.free_bytes
    assert inst["live"] is True and inst["heartbeatAgeSeconds"] < 30
    # Unchanged heartbeat keeps the inventory; a removal drops it.
    agent.heartbeat()
    agent.installed_dynamic = []
    agent.heartbeat()
    _, inst = server.admin("GET", f"/admin/instances/{agent.instance_id}")
    assert inst["dependencyManager"]["installedDepIdsDynamic"] == []
    _, listing = server.admin("GET", "/admin/instances")
    mine = [i for i in listing["instances"] if i["instanceId"] == agent.instance_id]
    assert mine and mine[0]["dependencyManager"]["installedDepIdsStatic"] == [fleet.deps["a"]]


def test_long_poll_wakes_when_an_item_is_queued(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("lp"))
    result: dict[str, object] = {}

    def poll() -> None:
        start = time.monotonic()
        result["answer"] = agent.poll(wait=20)
        result["elapsed"] = time.monotonic() - start

    before = server.long_polls_waiting()
    thread = threading.Thread(target=poll)
    thread.start()
    server.await_long_polls(before)
    status, job = fleet.submit(["b"])
    assert status == 200, job
    thread.join(25)
    status, body = result["answer"]  # type: ignore[misc]
    assert status == 200
    assert [i["depId"] for i in body["items"]] == [fleet.deps["b"]]
    assert result["elapsed"] < 5  # type: ignore[operator]
    assert body["pinnedDepIds"] == [fleet.deps["b"]]


def test_long_poll_times_out_empty_and_rejects_out_of_range(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("lpt"))
    start = time.monotonic()
    status, body = agent.poll(wait=0.5)
    assert status == 200 and body["items"] == []
    assert 0.4 <= time.monotonic() - start < 5
    assert agent.poll(wait=31)[0] == 422
    assert agent.poll(wait=-1)[0] == 422


def test_static_dep_gone_from_the_inventory_is_prefetched_again(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a", "b"], prefetch=True)
    a, b = fleet.deps["a"], fleet.deps["b"]
    agent = fleet.register(fleet.add_instance("gone"), static=[a, b])
    assert {i["state"] for i in agent.items().values()} == {"succeeded"}
    agent.installed_static = [b]  # `a` vanished from disk
    agent.heartbeat()
    items = agent.items()
    assert items[a]["state"] == "queued" and items[a]["generation"] == 2
    assert items[b]["state"] == "succeeded"
    # A failed item is not retried by every inventory change.
    item = agent.poll()[1]["items"][0]
    agent.status(item, "failed", "boom")
    agent.installed_static = []
    agent.heartbeat()
    items = agent.items()
    assert items[a]["state"] == "failed"
    assert items[b]["state"] == "queued"


def test_empty_polls_answered_from_memory_still_see_new_items_and_pins(
    server: RunningServer,
) -> None:
    """An empty poll is remembered in memory; an enqueue or pin change ends that."""
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("hinted"))
    for _ in range(3):  # the first asks the database, the next ones are answered from memory
        status, body = agent.poll()
        assert status == 200 and body == {"items": [], "pinnedDepIds": []}
    status, job = fleet.submit(["b"])
    assert status == 200 and job["instanceId"] == agent.instance_id
    status, body = agent.poll()  # right after the commit: no stale "empty"
    assert status == 200
    assert [i["depId"] for i in body["items"]] == [fleet.deps["b"]]
    assert body["pinnedDepIds"] == [fleet.deps["b"]]
    status, body = server.admin("DELETE", f"/admin/instances/{agent.instance_id}")
    assert status == 204
    assert agent.poll()[0] in (401, 404)
