"""Admin API: CRUD of deps, profiles, server types, instances; validation; fleet; admin auth."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.fleet import dep_doc, make_fleet, uid
from tests.support.server import RunningServer


def test_admin_endpoints_require_the_admin_token(server: RunningServer) -> None:
    # Each path from its own client address: wrong tokens from one address back off (429).
    for index, (method, path) in enumerate([
        ("GET", "/api/admin/deps"),
        ("PUT", "/api/admin/deps/x"),
        ("GET", "/api/admin/instances"),
        ("GET", "/api/admin/queues/x/items"),
        ("POST", "/api/admin/fleet"),
        ("POST", "/api/jobs"),
        ("GET", "/api/jobs"),
    ]):
        client = {"X-Forwarded-For": f"192.0.2.{index + 1}"}
        for headers in (
            {**client},
            {**client, "Authorization": "Bearer wrong"},
            {**client, "Authorization": server.admin_token},
        ):
            status, body = server.request(method, path, {} if method != "GET" else None, headers)
            assert status == 401, (method, path, headers)
            assert body["error"]["code"] == "unauthorized"


def test_dep_crud(server: RunningServer) -> None:
    dep_id = uid("dep")
    doc = dep_doc(dep_id, 42, "static", auth="hf_token")
    doc["sha256"] = doc["sha256"].upper()
    status, body = server.admin("PUT", f"/admin/deps/{dep_id}", doc)
    assert status == 200
    assert body["sha256"] == doc["sha256"].lower() and body["auth"] == "hf_token"
    assert server.admin("GET", f"/admin/deps/{dep_id}")[1]["expectedSizeBytes"] == 42
    assert dep_id in [d["depId"] for d in server.admin("GET", "/admin/deps")[1]["deps"]]
    assert server.admin("PUT", f"/admin/deps/{dep_id}", dict(doc, expectedSizeBytes=43))[0] == 200
    assert server.admin("GET", f"/admin/deps/{dep_id}")[1]["expectedSizeBytes"] == 43
    assert server.admin("DELETE", f"/admin/deps/{dep_id}")[0] == 204
    status, body = server.admin("GET", f"/admin/deps/{dep_id}")
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"destRelativePath": "../etc/passwd"}, "destRelativePath"),
        ({"destRelativePath": "models/../../x"}, "destRelativePath"),
        ({"destRelativePath": "/abs/path"}, "destRelativePath"),
        ({"destRelativePath": "C:/x"}, "destRelativePath"),
        ({"destRelativePath": "models\\x"}, "destRelativePath"),
        ({"sha256": "abc"}, "sha256"),
        ({"sha256": "g" * 64}, "sha256"),
        ({"expectedSizeBytes": 0}, "expectedSizeBytes"),
        ({"expectedSizeBytes": -5}, "expectedSizeBytes"),
        ({"url": "ftp://host/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"auth": "basic"}, "auth"),
        ({"kind": "weird"}, "kind"),
    ],
)
def test_dep_validation(server: RunningServer, change: dict[str, Any], field: str) -> None:
    dep_id = uid("bad")
    status, body = server.admin("PUT", f"/admin/deps/{dep_id}", dict(dep_doc(dep_id), **change))
    assert status == 422
    assert body["error"]["code"] == "validation_failed"
    assert field in body["error"]["message"]
    assert server.admin("GET", f"/admin/deps/{dep_id}")[0] == 404


def test_profile_server_type_instance_crud_and_references(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"])
    _, profile = server.admin("GET", f"/admin/profiles/{fleet.profile_id}")
    assert profile["staticDepIds"] == [fleet.deps["a"]]
    assert fleet.profile_id in [
        p["profileId"] for p in server.admin("GET", "/admin/profiles")[1]["profiles"]
    ]
    _, stype = server.admin("GET", f"/admin/server-types/{fleet.server_type}")
    assert stype["modelManagement"] == {
        "mode": "dependency_manager_v1",
        "profileId": fleet.profile_id,
        "enrollment": "open",
    }
    names = [s["serverType"] for s in server.admin("GET", "/admin/server-types")[1]["serverTypes"]]
    assert fleet.server_type in names
    instance_id = fleet.add_instance("crud", ip="10.1.1.1")
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert inst["ip"] == "10.1.1.1" and inst["live"] is False
    assert inst["dependencyManager"]["lastHeartbeatAt"] is None
    # References are checked.
    bad = server.admin("PUT", f"/admin/profiles/{uid('p')}", {"staticDepIds": ["missing-dep"]})
    assert bad[0] == 422 and "missing-dep" in bad[1]["error"]["message"]
    bad = server.admin(
        "PUT", f"/admin/server-types/{uid('s')}", {"modelManagement": {"profileId": "nope"}}
    )
    assert bad[0] == 422
    bad = server.admin("PUT", f"/admin/instances/{uid('i')}", {"serverType": "nope"})
    assert bad[0] == 422
    assert server.admin("DELETE", f"/admin/deps/{fleet.deps['a']}")[0] == 409
    assert server.admin("DELETE", f"/admin/profiles/{fleet.profile_id}")[0] == 409
    assert server.admin("DELETE", f"/admin/server-types/{fleet.server_type}")[0] == 409
    # Deleting in order works.
    assert server.admin("DELETE", f"/admin/instances/{instance_id}")[0] == 204
    assert server.admin("GET", f"/admin/instances/{instance_id}")[0] == 404
    assert server.admin("GET", f"/admin/queues/{instance_id}/items")[0] == 404
    assert server.admin("DELETE", f"/admin/server-types/{fleet.server_type}")[0] == 204
    assert server.admin("DELETE", f"/admin/profiles/{fleet.profile_id}")[0] == 204
    assert server.admin("GET", f"/admin/profiles/{fleet.profile_id}")[0] == 404


def test_fleet_document_is_applied_in_one_transaction(server: RunningServer) -> None:
    d1, p1, s1, i1 = uid("fd"), uid("fp"), uid("fs"), uid("fi")
    doc = {
        "deps": {d1: dep_doc(d1, 5, "static")},
        "profiles": {p1: {"staticDepIds": [d1], "prefetchOnBoot": True, "dynamicPolicy": {}}},
        "serverTypes": {
            s1: {"modelManagement": {"mode": "dependency_manager_v1", "profileId": p1}}
        },
        "instances": {i1: {"ip": "10.2.2.2", "serverType": s1}},
    }
    status, body = server.admin("POST", "/admin/fleet", doc)
    assert status == 200, body
    assert body == {"deps": 1, "profiles": 1, "serverTypes": 1, "instances": 1, "warnings": []}
    assert server.admin("GET", f"/admin/instances/{i1}")[1]["serverType"] == s1
    # A bad entry anywhere rolls back everything.
    d2, i2 = uid("fd"), uid("fi")
    broken = {
        "deps": {d2: dep_doc(d2)},
        "instances": {i2: {"serverType": "no-such-type"}},
    }
    status, body = server.admin("POST", "/admin/fleet", broken)
    assert status == 422
    assert f"instances.{i2}" in body["error"]["message"]
    assert server.admin("GET", f"/admin/deps/{d2}")[0] == 404


def test_instance_list_has_inventory_and_heartbeat_age(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("list"), dynamic=[fleet.deps["b"]])
    _, body = server.admin("GET", "/admin/instances")
    mine = next(i for i in body["instances"] if i["instanceId"] == agent.instance_id)
    assert mine["live"] is True
    assert mine["heartbeatAgeSeconds"] is not None
    assert mine["dependencyManager"]["installedDepIdsDynamic"] == [fleet.deps["b"]]
