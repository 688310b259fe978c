"""Jobs: placement preference, pending, lifecycle, pins, dep failure policy, waiting reads."""

from __future__ import annotations

import threading
import time

from tests.server.fleet import make_fleet
from tests.support.server import RunningServer
from tests.support.wait import wait_until


def test_placement_prefers_held_bytes_then_queued_bytes_then_free_disk(
    server: RunningServer,
) -> None:
    fleet = make_fleet(
        server,
        sizes={"small": (100, "dynamic"), "big": (10_000, "dynamic"), "other": (50_000, "dynamic")},
    )
    d = fleet.deps
    # Holds the big dep: wins over one that holds more deps by count but fewer bytes.
    holder = fleet.register(fleet.add_instance("holder"), dynamic=[d["big"]])
    fleet.register(fleet.add_instance("smallholder"), dynamic=[d["small"]])
    status, job = fleet.submit(["small", "big"])
    assert status == 200, job
    assert job["instanceId"] == holder.instance_id
    # small is downloaded; big is held but counts only once its touch succeeded.
    assert job["missingDepIds"] == [d["small"], d["big"]]
    assert job["state"] == "waiting_deps"
    # The holder is now busy (one slot); then: least queued bytes, then most free disk.
    fleet2 = make_fleet(server, sizes={"x": (100, "dynamic"), "y": (5_000, "dynamic")})
    busy = fleet2.register(fleet2.add_instance("busy"))
    roomy = fleet2.register(fleet2.add_instance("roomy"))
    roomy.free_bytes = 10**13
    roomy.heartbeat()
    first = fleet2.submit(["y"])[1]
    assert first["instanceId"] == roomy.instance_id  # tie on held and queued: more free disk
    fleet2.server.admin(
        "POST", f"/jobs/{first['jobId']}/complete", {"ok": False, "error": "cancel"}
    )
    # roomy still has y queued (5000 bytes): an equal instance without a queue wins.
    second = fleet2.submit(["x"])[1]
    assert second["instanceId"] == busy.instance_id


def test_job_lifecycle_pins_and_touch(server: RunningServer) -> None:
    fleet = make_fleet(server)
    d = fleet.deps
    agent = fleet.register(fleet.add_instance("life"), dynamic=[d["c"]])
    status, job = fleet.submit(["b", "c"], jobId=f"job-{agent.instance_id}")
    assert status == 200
    assert set(job) >= {"jobId", "instanceId", "state", "missingDepIds"}
    assert job["jobId"] == f"job-{agent.instance_id}" and job["missingDepIds"] == [d["b"], d["c"]]
    # Same id and spec again: the same job; another spec: 409.
    assert fleet.submit(["b", "c"], jobId=job["jobId"])[1]["instanceId"] == agent.instance_id
    assert fleet.submit(["b"], jobId=job["jobId"])[0] == 409
    items = agent.poll()[1]
    ops = {i["depId"]: i["op"] for i in items["items"]}
    assert ops == {d["b"]: "download", d["c"]: "touch"}
    assert items["pinnedDepIds"] == sorted([d["b"], d["c"]])
    assert agent.heartbeat()[1]["pinnedDepIds"] == sorted([d["b"], d["c"]])
    assert server.admin("POST", f"/jobs/{job['jobId']}/start")[0] == 409  # not ready yet
    agent.installed_dynamic = [d["b"], d["c"]]
    agent.heartbeat()
    # The inventory lists both, but c was queued as a touch: not proven until it succeeded.
    _, waiting = server.admin("GET", f"/jobs/{job['jobId']}")
    assert waiting["state"] == "waiting_deps" and waiting["missingDepIds"] == [d["c"]]
    touch = next(i for i in items["items"] if i["op"] == "touch")
    assert agent.status(touch, "succeeded")[0] == 200
    _, ready = server.admin("GET", f"/jobs/{job['jobId']}")
    assert ready["state"] == "ready" and ready["missingDepIds"] == []
    status, running = server.admin("POST", f"/jobs/{job['jobId']}/start")
    assert status == 200 and running["state"] == "running"
    assert server.admin("POST", f"/jobs/{job['jobId']}/start")[1]["state"] == "running"
    status, done = server.admin("POST", f"/jobs/{job['jobId']}/complete", {"ok": True})
    assert status == 200 and done["state"] == "completed"
    assert agent.heartbeat()[1]["pinnedDepIds"] == []
    assert server.admin("POST", f"/jobs/{job['jobId']}/complete", {"ok": False})[0] == 409
    _, listing = server.admin("GET", f"/jobs?state=completed&instanceId={agent.instance_id}")
    assert [j["jobId"] for j in listing["jobs"]] == [job["jobId"]]


def test_pending_job_is_placed_when_an_instance_becomes_live(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("late")
    status, job = fleet.submit(["b"])
    assert status == 200 and job["state"] == "pending" and job["instanceId"] is None
    assert job["missingDepIds"] == [fleet.deps["b"]]
    fleet.register(instance_id)
    _, placed = server.admin("GET", f"/jobs/{job['jobId']}")
    assert placed["state"] == "waiting_deps" and placed["instanceId"] == instance_id


def test_completing_a_job_places_the_next_pending_one(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("slot"), dynamic=[fleet.deps["b"]])
    first = fleet.submit(["b"])[1]
    second = fleet.submit(["b"])[1]
    assert first["state"] == "waiting_deps" and second["state"] == "pending"
    touch = agent.poll()[1]["items"][0]
    assert touch["op"] == "touch"
    agent.status(touch, "succeeded")
    server.admin("POST", f"/jobs/{first['jobId']}/start")
    server.admin("POST", f"/jobs/{first['jobId']}/complete", {"ok": True})
    _, after = server.admin("GET", f"/jobs/{second['jobId']}")
    assert after["state"] == "waiting_deps" and after["instanceId"] == agent.instance_id
    agent.status(agent.poll()[1]["items"][0], "succeeded")  # its own touch
    _, after = server.admin("GET", f"/jobs/{second['jobId']}")
    assert after["state"] == "ready"


def test_dep_failure_replaces_the_job_then_fails_with_the_agent_error(
        server: RunningServer) -> None:
    fleet = make_fleet(server)
    one = fleet.register(fleet.add_instance("f1"))
    job = fleet.submit(["b"])[1]
    assert job["instanceId"] == one.instance_id
    two = fleet.register(fleet.add_instance("f2"))
    item = one.poll()[1]["items"][0]
    one.status(item, "running")
    one.status(item, "failed", "Download domain not allowed: evil.example")
    _, moved = server.admin("GET", f"/jobs/{job['jobId']}")
    assert moved["state"] == "waiting_deps" and moved["instanceId"] == two.instance_id
    assert [h["event"] for h in moved["history"]][-2:] == ["dep_failed", "placed"]
    assert one.heartbeat()[1]["pinnedDepIds"] == []
    item = two.poll()[1]["items"][0]
    two.status(item, "failed", "Missing HF_TOKEN")
    _, failed = server.admin("GET", f"/jobs/{job['jobId']}")
    assert failed["state"] == "failed"
    assert "Missing HF_TOKEN" in failed["error"]
    assert two.heartbeat()[1]["pinnedDepIds"] == []


def test_get_job_waits_for_a_state_change(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("wait"))
    job = fleet.submit(["b"])[1]
    result: dict[str, object] = {}

    def read() -> None:
        start = time.monotonic()
        result["job"] = server.admin("GET", f"/jobs/{job['jobId']}?waitSeconds=20")[1]
        result["elapsed"] = time.monotonic() - start

    before = server.long_polls_waiting("job")
    thread = threading.Thread(target=read)
    thread.start()
    server.await_long_polls(before, "job")
    agent.installed_dynamic = [fleet.deps["b"]]
    agent.heartbeat()
    thread.join(25)
    assert result["job"]["state"] == "ready"  # type: ignore[index]
    assert result["elapsed"] < 5  # type: ignore[operator]
    # seenState that differs from the current state answers at once.
    start = time.monotonic()
    _, now = server.admin("GET", f"/jobs/{job['jobId']}?waitSeconds=20&seenState=waiting_deps")
    assert now["state"] == "ready" and time.monotonic() - start < 5


def test_job_validation(server: RunningServer) -> None:
    fleet = make_fleet(server)
    assert server.admin("POST", "/jobs", {"serverType": "nope", "depIds": []})[0] == 422
    status, body = server.admin("POST", "/jobs",
                                {"serverType": fleet.server_type, "depIds": ["zz"]})
    assert status == 422 and "zz" in body["error"]["message"]
    assert server.admin("GET", "/jobs/does-not-exist")[0] == 404
    assert server.admin("POST", "/jobs/does-not-exist/start")[0] == 404


def test_concurrent_submits_never_reserve_one_slot_twice(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.register(fleet.add_instance("race")).instance_id
    answers: list[dict[str, object]] = []
    lock = threading.Lock()

    def submit() -> None:
        status, job = fleet.submit(["b"])
        assert status == 200, job
        with lock:
            answers.append(job)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    placed = [j for j in answers if j["instanceId"] == instance_id]
    assert len(answers) == 8 and len(placed) == 1
    assert all(j["state"] == "pending" for j in answers if j not in placed)


def test_a_restarted_agent_gets_no_job_until_it_says_what_it_holds(server: RunningServer) -> None:
    fleet = make_fleet(server)
    d = fleet.deps
    instance_id = fleet.add_instance("restart")
    fleet.register(instance_id, dynamic=[d["b"]])
    # The agent restarts: registers again, but its first heartbeat has not come yet.
    agent = fleet.register_only(instance_id)
    _, job = fleet.submit(["b"])
    assert job["state"] == "pending", "placed on the inventory from before the restart"
    # Its first heartbeat says the file is gone: the job is placed with the dep missing.
    agent.heartbeat()
    # The heartbeat places it, or the sweep does when it held the pending job locked
    # at that moment (the heartbeat then skips it, and the sweep found no live instance).
    wait_until(
        lambda: server.admin("GET", f"/jobs/{job['jobId']}")[1]["instanceId"] is not None,
        30, "the job to be placed",
    )
    _, placed = server.admin("GET", f"/jobs/{job['jobId']}")
    assert placed["instanceId"] == instance_id
    assert placed["state"] == "waiting_deps" and placed["missingDepIds"] == [d["b"]]
