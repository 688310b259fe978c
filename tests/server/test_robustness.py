"""Error shape, malformed bodies (4xx, never 500), secrets kept out of answers and logs,
OpenAPI coverage, metrics, the agent bundle."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.server.fleet import make_fleet
from tests.support.server import RunningServer

AGENT_PATHS = [
    "/api/dependencies/register",
    "/api/dependencies/status",
    "/api/dependencies/heartbeat",
]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b'"text"', b"null", b"", b"\xff\xfe", b'{"instanceId": 5}', b"{}"],
)
def test_malformed_agent_bodies_are_4xx_with_the_error_shape(
    server: RunningServer, raw: bytes
) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("bad"))
    headers = {"Content-Type": "application/json", "X-DM-Secret": server.shared_secret,
               **agent.auth}
    for path in AGENT_PATHS:
        status, body = server.request("POST", path, raw_body=raw, headers=headers)
        assert 400 <= status < 500, (path, raw, status, body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("PUT", "/admin/deps/x1", {"url": 5, "destRelativePath": ["a"]}),
        (
            "PUT",
            "/admin/deps/x2",
            {"url": "https://hf.co/a", "destRelativePath": "a", "expectedSizeBytes": "big"},
        ),
        ("PUT", "/admin/profiles/p", {"staticDepIds": "notalist"}),
        ("PUT", "/admin/profiles/p", {"dynamicPolicy": {"minFreeBytes": -1}}),
        ("PUT", "/admin/server-types/s", {"modelManagement": "x"}),
        ("PUT", "/admin/instances/i", {"ip": "1.2.3.4"}),
        ("POST", "/admin/fleet", {"deps": []}),
        ("POST", "/jobs", {"serverType": "x"}),
        ("POST", "/jobs", {"serverType": "x", "depIds": "a"}),
        ("POST", "/jobs/j/complete", {"ok": "maybe"}),
    ],
)
def test_malformed_admin_bodies_are_422_naming_the_field(
    server: RunningServer, method: str, path: str, payload: Any
) -> None:
    status, body = server.admin(method, path, payload)
    assert status in (404, 422), body
    assert body["error"]["code"] in ("validation_failed", "not_found")
    assert body["error"]["message"]


def test_wrong_types_in_protocol_bodies(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("types"))
    hb = {"instanceId": agent.instance_id, "installedStaticDepIds": "a", "diskStats": 5}
    status, body = server.request("POST", "/api/dependencies/heartbeat", hb, agent.auth)
    assert status == 422 and "installedStaticDepIds" in body["error"]["message"]
    st = {"instanceId": agent.instance_id, "itemId": "a.1", "state": "exploded"}
    status, body = server.request("POST", "/api/dependencies/status", st, agent.auth)
    assert status == 422 and "state" in body["error"]["message"]
    status, _ = server.request("GET", "/api/dependencies/queue?limit=25", headers=agent.auth)
    assert status == 422
    path = f"/api/dependencies/queue?instanceId={agent.instance_id}&limit=abc"
    assert server.request("GET", path, headers=agent.auth)[0] == 422
    assert server.request("GET", "/api/nowhere")[0] == 404
    assert server.request("DELETE", "/api/dependencies/register")[0] == 405


def test_unknown_fields_are_ignored(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("unk")
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {
            "serverType": fleet.server_type,
            "agentVersion": "v",
            "instanceId": instance_id,
            "x": {"y": 1},
        },
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, body


def test_secrets_never_appear_in_answers_or_logs(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("secret"))
    server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "v", "instanceId": agent.instance_id},
        {"X-DM-Secret": "wrong-" + server.shared_secret},
    )
    answers = [
        server.admin("GET", "/admin/instances")[1],
        server.admin("GET", f"/admin/instances/{agent.instance_id}")[1],
        server.request("GET", "/openapi.json")[1],
        server.request("GET", "/metrics")[1],
    ]
    text = repr(answers) + server.logs()
    for secret in (server.admin_token, server.shared_secret, agent.token):
        assert secret not in text
    assert "agent_token_hash" not in repr(answers) and "agentTokenHash" not in repr(answers)


def test_openapi_describes_every_endpoint(server: RunningServer) -> None:
    status, spec = server.request("GET", "/openapi.json")
    assert status == 200
    paths = spec["paths"]
    expected = {
        "/api/dependencies/register": {"post"},
        "/api/dependencies/queue": {"get"},
        "/api/dependencies/status": {"post"},
        "/api/dependencies/heartbeat": {"post"},
        "/api/admin/deps": {"get"},
        "/api/admin/deps/{dep_id}": {"get", "put", "delete"},
        "/api/admin/profiles": {"get"},
        "/api/admin/profiles/{profile_id}": {"get", "put", "delete"},
        "/api/admin/server-types": {"get"},
        "/api/admin/server-types/{server_type}": {"get", "put", "delete"},
        "/api/admin/instances": {"get"},
        "/api/admin/instances/{instance_id}": {"get", "put", "delete"},
        "/api/admin/queues/{instance_id}/items": {"get"},
        "/api/admin/fleet": {"post"},
        "/api/jobs": {"get", "post"},
        "/api/jobs/{job_id}": {"get"},
        "/api/jobs/{job_id}/start": {"post"},
        "/api/jobs/{job_id}/complete": {"post"},
        "/metrics": {"get"},
        "/agent/depman-agent.pyz": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path
    schemas = spec["components"]["schemas"]
    for name in (
        "RegisterRequest",
        "QueueResponse",
        "StatusRequest",
        "HeartbeatRequest",
        "JobCreate",
        "JobPublic",
        "DepIn",
        "InstanceOut",
        "FleetIn",
        "ErrorResponse",
    ):
        assert name in schemas, name
    props = schemas["HeartbeatRequest"]["properties"]
    assert "installedStaticDepIds" in props and "downloadingDepIds" in props


def test_metrics_in_prometheus_format(server: RunningServer) -> None:
    fleet = make_fleet(server)
    fleet.register(fleet.add_instance("m"))
    fleet.submit(["b"])
    status, text = server.request("GET", "/metrics", headers={"Accept": "text/plain"})
    assert status == 200
    assert re.search(r"^depman_instances_live \d", text, re.M)
    assert 'depman_queue_items{state="queued"}' in text
    assert 'depman_jobs{state="waiting_deps"}' in text
    assert "depman_http_request_duration_seconds_bucket" in text
    assert 'route="/api/dependencies/heartbeat"' in text


def test_agent_bundle_is_served_or_unavailable(server: RunningServer) -> None:
    status, body = server.request("GET", "/agent/depman-agent.pyz")
    assert status in (200, 503)
    if status == 503:
        assert body["error"]["code"] == "unavailable"
