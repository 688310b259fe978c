"""Telemetry over its caps costs a field agent nothing: the request is taken, the value trimmed.

Field agents send descriptive fields (provider, progress stages, disk paths and
diagnostics) that depman bounds. One character over a cap, or a control
character, must not refuse a heartbeat and make the instance look dead: the
value is cut or cleaned (text) or dropped (documents), counted per field in
`/metrics`, and logged once per instance without the value. Ids stay strict.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.server.fleet import make_fleet, uid
from tests.server.hostile import exchange
from tests.server.v1_client import V1Client, V1Error
from tests.support.server import RunningServer

LOG_LINE = "agent telemetry trimmed, request taken"
COUNTER = re.compile(r'^depman_agent_telemetry_trimmed_total\{field="([^"]+)"\} ([0-9.e+]+)$', re.M)


def trimmed_counts(server: RunningServer) -> dict[str, float]:
    """`depman_agent_telemetry_trimmed_total` by field."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    return {field: float(value) for field, value in COUNTER.findall(text)}


def added(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each field's counter grew by (fields that did not grow left out)."""
    grown = {field: value - before.get(field, 0.0) for field, value in after.items()}
    return {field: value for field, value in grown.items() if value}


def trim_lines(server: RunningServer, instance_id: str, timeout: float = 10.0) -> list[str]:
    """The trim log lines naming the instance, once at least one has been printed."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            line
            for line in server.logs().splitlines()
            if LOG_LINE in line and f"instanceId={instance_id}" in line
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def nested(levels: int) -> dict[str, Any]:
    """An object nested `levels` deep."""
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        doc = {"inner": doc}
    return doc


def oversize_heartbeat(client: V1Client, dep_id: str, marker: str) -> dict[str, Any]:
    """Heartbeat extras of a field agent whose telemetry is over every cap."""
    return {
        "downloading": [dep_id],
        "activeDownloads": [
            {
                "depId": dep_id,
                "stage": f"downloading\n{marker}" + "s" * 60,
                "downloadedBytes": 500,
                "expectedBytes": 2000,
                "startedAtMs": 1_700_000_000_000,
                "updatedAtMs": 1_700_000_002_000,
                "tool": f"aria2c\x1b[31m{marker}" + "t" * 100,
            }
        ],
        "diskStats": {
            **client.disk(),
            "path": f"/workspace/{marker}/" + "p" * 1000,
            "statPath": f"/work\tspace/{marker}",
        },
        "diskDiagnostics": {"mounts": [f"{marker} " + "m" * 20_000]},
    }


def test_oversize_telemetry_is_trimmed_and_the_requests_taken(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("tele-trim")
    marker = uid("never-logged")
    before = trimmed_counts(server)
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    provider = f"vast\x07{marker}" + "x" * 120
    client.register(
        instance_id=instance_id,
        agent_version="0.9.20",
        provider=provider,
        providerMetadata=nested(9),
    )
    status, job = fleet.submit(["b"])
    assert status == 200, job
    client.heartbeat()
    (item,) = client.poll()
    client.status(item, "running")
    extras = oversize_heartbeat(client, item["depId"], marker)
    client.heartbeat(**extras)
    client.heartbeat(**extras)  # unchanged: may be answered before the handler, counted once
    answer = client._call(
        "POST",
        "/dependencies/status",
        {
            "instanceId": instance_id,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "state": "running",
            "diskStats": {**client.disk(), "path": "/" + "q" * 1000},
        },
        client._auth(),
    )
    assert answer["ok"] is True

    status, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, inst
    assert inst["live"] is True
    assert inst["provider"] == (f"vast {marker}" + "x" * 120)[:100]
    assert inst["providerMetadata"] is None  # nested 9 deep: dropped
    dm = inst["dependencyManager"]
    (row,) = dm["activeDownloads"]
    assert row["stage"] == (f"downloading {marker}" + "s" * 60)[:50]
    assert row["tool"] == (f"aria2c [31m{marker}" + "t" * 100)[:100]
    assert row["downloadedBytes"] == 500 and row["expectedBytes"] == 2000
    assert dm["diskStats"]["path"] == (f"/workspace/{marker}/" + "p" * 1000)[:1000]
    assert dm["diskStats"]["freeBytes"] == client.disk()["freeBytes"]
    assert dm["diskDiagnostics"] is None  # 20,000 characters: dropped
    assert dm["downloadingDepIds"] == [item["depId"]]

    # A document with a NUL is kept, the NUL replaced (the store cannot take one).
    client.heartbeat(downloading=[item["depId"]], diskDiagnostics={"mount": "/workspace\x00x"})
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert inst["dependencyManager"]["diskDiagnostics"] == {"mount": "/workspace x"}
    # NaN parses in Python but no JSON column takes it: the document is dropped.
    raw = f'{{"instanceId": "{instance_id}", "diskDiagnostics": {{"free": NaN}}}}'.encode()
    status, _headers, body = exchange(
        server,
        "POST",
        "/api/dependencies/heartbeat",
        body=raw,
        headers={**client._auth(), "Content-Type": "application/json"},
    )
    assert status == 200, body
    _, inst = server.admin("GET", f"/admin/instances/{instance_id}")
    assert inst["dependencyManager"]["diskDiagnostics"] == {"mount": "/workspace x"}

    assert added(before, trimmed_counts(server)) == {
        "provider": 1,
        "providerMetadata": 1,
        "activeDownloads.stage": 2,  # two heartbeats, one value each
        "activeDownloads.tool": 2,
        "diskStats.path": 3,  # two heartbeats and the status report
        "diskStats.statPath": 2,
        "diskDiagnostics": 4,
    }
    lines = trim_lines(server, instance_id)
    assert len(lines) == 1, lines
    (line,) = lines  # one line per instance, however many requests
    assert "request=register" in line
    cut = f"cut to 100 characters from {len(provider)}"
    assert f"provider: control characters replaced, {cut}" in line
    assert "providerMetadata: dropped: nested deeper than 8 levels" in line
    assert marker not in server.logs()
    assert "Traceback" not in server.logs()


def test_a_heartbeats_trims_are_logged_once_without_the_values(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("tele-log"))
    marker = uid("never-logged")
    for _ in range(3):
        status, body = agent.heartbeat(
            diskStats={"freeBytes": 1, "path": f"{marker}\r\n2026-12-03 INFO forged"},
            diskDiagnostics={"x": [f"{marker}"] * 2000},
        )
        assert status == 200, body
    (line,) = trim_lines(server, agent.instance_id)
    assert "request=heartbeat" in line
    assert "diskStats.path: control characters replaced" in line
    assert "diskDiagnostics: dropped:" in line and "over 16384" in line
    assert marker not in server.logs()  # the forged line's text included


def test_the_strict_fields_of_the_same_requests_still_refuse(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("tele-strict")
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret)
    client.register(instance_id=instance_id, agent_version="0.9.20")
    before = trimmed_counts(server)
    extras = oversize_heartbeat(client, "some-dep", uid("m"))
    heartbeat = {
        "instanceId": "i" * 201,
        "installedStaticDepIds": [],
        "installedDynamicDepIds": [],
        **{key: value for key, value in extras.items() if key != "downloading"},
    }
    status, body = server.request("POST", "/api/dependencies/heartbeat", heartbeat, client._auth())
    assert status == 422, body
    assert body["error"]["code"] == "validation_failed"
    for what, doc in [
        ("dep id with a newline", {"activeDownloads": [{"depId": "a\nb", "stage": "s" * 99}]}),
        ("downloadedBytes 2^63", {"activeDownloads": [{"depId": "a", "downloadedBytes": 2**63}]}),
        (
            "destination with a newline",
            {"activeDownloads": [{"depId": "a", "destRelativePath": "models/a\nb"}]},
        ),
        ("diskStats.freeBytes 2^63", {"diskStats": {"freeBytes": 2**63, "path": "p" * 2000}}),
        ("diskDiagnostics not an object", {"diskDiagnostics": "not an object"}),
    ]:
        status, body = server.request(
            "POST",
            "/api/dependencies/heartbeat",
            {"instanceId": instance_id, **doc},
            client._auth(),
        )
        assert status == 422, (what, body)
    for doc in (
        {"instanceId": "i" * 201, "provider": "p" * 200},
        {"instanceId": instance_id, "agentVersion": "1.0\nforged", "provider": "p" * 200},
        {"instanceId": instance_id, "provider": 7},
    ):
        status, body = server.request(
            "POST",
            "/api/dependencies/register",
            {"serverType": fleet.server_type, **doc},
            {"X-DM-Secret": server.shared_secret},
        )
        assert status == 422, (doc, body)
    try:
        client._call(
            "POST",
            "/dependencies/status",
            {
                "instanceId": instance_id,
                "itemId": "x\ny.1",
                "state": "running",
                "diskStats": {"path": "p" * 2000},
            },
            client._auth(),
        )
    except V1Error as exc:
        assert exc.status == 422
    else:
        raise AssertionError("a status report with a bad item id was taken")
    assert added(before, trimmed_counts(server)) == {}  # nothing of a refused request was taken
    assert trim_lines(server, instance_id, timeout=0) == []
