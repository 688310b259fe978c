"""Bad input is a 4xx with the error shape on both databases, never a 500 or a traceback."""

from __future__ import annotations

from typing import Any

from tests.server.fleet import dep_doc, make_fleet, uid
from tests.server.hostile import assert_error_shape, exchange
from tests.support.server import RunningServer

HUGE = 10**20
AGENT_JSON = {"Content-Type": "application/json"}


def _expect_4xx(status: int, body: Any, what: str) -> None:
    assert 400 <= status < 500, (what, status, body)
    assert_error_shape(body)


def test_out_of_range_and_control_characters_are_refused(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("bad"))
    cases: list[tuple[str, dict[str, Any]]] = [
        ("diskStats 1e20", {"diskStats": {"totalBytes": 1e20, "freeBytes": 1, "usedBytes": 1}}),
        ("diskStats 2^63", {"diskStats": {"totalBytes": 2**63, "freeBytes": 1, "usedBytes": 1}}),
        ("negative", {"dynamicBytesUsed": -1}),
        ("queueDepth 2^31", {"queueDepth": 2**31}),
        ("NUL in a dep id", {"installedDynamicDepIds": ["a\x00b"]}),
        ("newline in a dep id", {"failedDepIds": ["a\nb"]}),
        ("301-char dep id", {"downloadingDepIds": ["d" * 301]}),
        ("NaN speed", {"activeDownloads": [{"depId": "x", "bytesPerSecond": "NaN"}]}),
    ]
    for what, extra in cases:
        status, body = agent.heartbeat(**extra)
        _expect_4xx(status, body, what)
        assert status == 422
    for what, doc in [
        ("instanceId over 200", {"instanceId": "i" * 250}),
        ("instanceId with NUL", {"instanceId": "a\x00b"}),
    ]:
        status, body = server.request(
            "POST", "/api/dependencies/heartbeat", doc, agent.auth
        )
        _expect_4xx(status, body, what)
    status, body = server.admin(
        "PUT", f"/admin/server-types/{uid('st')}", {"maxActiveJobs": 2**63}
    )
    _expect_4xx(status, body, "maxActiveJobs 2^63")
    status, body = server.admin("PUT", f"/admin/deps/{'d' * 250}", dep_doc("x"))
    _expect_4xx(status, body, "dep id over 200")
    status, body = server.admin(
        "PUT", "/admin/deps/ok-id", dep_doc("x", expectedSizeBytes=HUGE)
    )
    _expect_4xx(status, body, "expectedSizeBytes 1e20")
    status, body = server.request(
        "POST",
        "/api/dependencies/status",
        {"instanceId": agent.instance_id, "itemId": "x.1", "state": "running",
         "diskStats": {"freeBytes": HUGE}},
        agent.auth,
    )
    _expect_4xx(status, body, "status diskStats 1e20")
    big = "9" * 5000  # past Python's 4,300-digit int() limit
    for path in (
        f"/api/dependencies/queue?instanceId={agent.instance_id}&limit={big}",
        f"/api/dependencies/queue?instanceId={agent.instance_id}&waitSeconds={big}",
    ):
        status, _headers, body = exchange(server, "GET", path, headers=agent.auth)
        _expect_4xx(status, body, "5000-digit query number")
    raw = f'{{"instanceId": "{agent.instance_id}", "dynamicBytesUsed": {big}}}'.encode()
    status, _headers, body = exchange(
        server,
        "POST",
        "/api/dependencies/heartbeat",
        body=raw,
        headers={**agent.auth, **AGENT_JSON},
    )
    _expect_4xx(status, body, "5000-digit JSON number")
    assert "Traceback" not in server.logs()


def test_a_nul_in_the_query_is_refused_before_auth(server: RunningServer) -> None:
    for path in (
        "/api/dependencies/queue?instanceId=a%00b",
        "/api/dependencies/queue?instanceId=a%0Ab&limit=5",
        "/api/admin/deps/a%00b",
        "/api/jobs?instanceId=a%00b",
    ):
        status, _headers, body = exchange(
            server, "GET", path, headers={"Authorization": "Bearer anything"}
        )
        _expect_4xx(status, body, path)
    assert "Traceback" not in server.logs()


def test_a_4300_digit_session_cookie_is_a_login_redirect(server: RunningServer) -> None:
    for cookie in ("9" * 4300, "9" * 4300 + ".abc", "²³.abc", "1." + "a" * 5000):
        status, headers, _body = exchange(
            server, "GET", "/", headers={"Cookie": f"depman_session={cookie}"}
        )
        assert status == 303 and headers["location"].startswith("/login"), status
        status, _headers, body = exchange(
            server, "GET", "/fragments/fleet", headers={"Cookie": f"depman_session={cookie}"}
        )
        assert status == 401
        assert_error_shape(body)
    assert "Traceback" not in server.logs()


def test_log_lines_cannot_be_forged(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("logs")
    forged = "1.0\n2026-12-03 00:00:00 INFO depman.server: admin token rotated"
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": forged, "instanceId": instance_id},
        {"X-DM-Secret": server.shared_secret},
    )
    _expect_4xx(status, body, "newline in agentVersion")
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": "v\x1b[31m", "instanceId": instance_id},
        {"X-DM-Secret": server.shared_secret},
    )
    _expect_4xx(status, body, "ESC in agentVersion")
    assert "admin token rotated" not in server.logs()
    assert "\x1b" not in server.logs()


def test_destinations_are_limited_to_model_folders(server: RunningServer) -> None:
    for dest in (
        "custom_nodes/x/__init__.py",
        "main.py",
        "models",
        "models/",
        "user/default/comfy.settings.json",
        "models/loras/a\nb.safetensors",
        "models/loras/\x1b[2Jx.safetensors",
    ):
        status, body = server.admin(
            "PUT", f"/admin/deps/{uid('dest')}", dep_doc("x", destRelativePath=dest)
        )
        assert status == 422, (dest, body)
        assert_error_shape(body)
    status, body = server.admin(
        "POST",
        "/admin/fleet",
        {"deps": {uid("fleet-dest"): dep_doc("x", destRelativePath="custom_nodes/evil.py")}},
    )
    assert status == 422, body
    status, body = server.admin(
        "PUT", f"/admin/deps/{uid('ok')}", dep_doc("x", destRelativePath="models/vae/x.pt")
    )
    assert status == 200, body


def test_api_docs_are_off_and_the_schema_is_served(server: RunningServer) -> None:
    for path in ("/docs", "/redoc"):
        status, _headers, body = exchange(server, "GET", path)
        assert status == 404, path
    status, _headers, body = exchange(server, "GET", "/openapi.json")
    assert status == 200 and body["paths"]
