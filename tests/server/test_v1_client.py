"""An unmodified v1 client (urllib only) registers, polls, reports and heartbeats."""

from __future__ import annotations

from tests.server.fleet import make_fleet
from tests.server.v1_client import V1Client, V1Error
from tests.support.server import RunningServer


def test_v1_client_full_cycle(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    instance_id = fleet.add_instance("v1", ip="10.7.7.7")
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    answer = client.register(instance_ip="10.7.7.7")
    assert answer["instanceId"] == instance_id
    client.heartbeat()
    assert client.run_once() == [fleet.deps["a"]]
    job = fleet.submit(["a", "b"])[1]
    assert job["instanceId"] == instance_id and job["missingDepIds"] == [fleet.deps["b"]]
    assert client.run_once() == [fleet.deps["b"]]
    _, after = server.admin("GET", f"/jobs/{job['jobId']}")
    assert after["state"] == "ready"
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert inst["dependencyManager"]["installedDepIdsStatic"] == [fleet.deps["a"]]
    assert inst["dependencyManager"]["installedDepIdsDynamic"] == [fleet.deps["b"]]
    assert {i["state"] for i in client.poll()} == set()


def test_v1_client_reregisters_after_401(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("v1r")
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    client.register(instance_id=instance_id)
    client.token = "stale-token"
    try:
        client.poll()
    except V1Error as exc:
        assert exc.status == 401
    else:
        raise AssertionError("a stale token was accepted")
    client.register(instance_id=instance_id)
    assert client.poll() == []
