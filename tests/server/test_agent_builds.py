"""Published agent builds: stored, served, and offered as `agentUpdate` on every answer path."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from depman.core.agent_builds import in_rollout
from tests.server.fleet import Agent, Fleet, make_fleet, uid
from tests.server.test_agent_gateway import served_by
from tests.server.v1_client import V1Client
from tests.support.agent_builds import pyz_with, sha256_hex
from tests.support.server import RunningServer, run_replica

OLD = "test/1"  # the version fleet.register announces


def publish(
    server: RunningServer, server_type: str, data: bytes, query: str = ""
) -> tuple[int, Any]:
    """PUT the build as the CLI does (raw body)."""
    return server.request(
        "PUT",
        f"/api/admin/agent-builds/{server_type}{query}",
        raw_body=data,
        headers={
            "Authorization": f"Bearer {server.admin_token}",
            "Content-Type": "application/octet-stream",
        },
    )


def fetch(url: str) -> tuple[bytes, str]:
    """GET a file; its bytes and X-Depman-Agent-Sha256."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read(), resp.headers["X-Depman-Agent-Sha256"]


def register(server: RunningServer, fleet: Fleet, instance_id: str, version: str) -> Any:
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "agentVersion": version, "instanceId": instance_id},
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, body
    return body


def test_publish_reads_the_version_stores_and_serves_the_build(server: RunningServer) -> None:
    fleet = make_fleet(server)
    data = pyz_with("depman-agent/7.0.0")
    status, build = publish(server, fleet.server_type, data, "?rolloutPercent=40")
    assert status == 200, build
    assert build["version"] == "depman-agent/7.0.0"
    assert build["sha256"] == sha256_hex(data)
    assert (build["sizeBytes"], build["rolloutPercent"]) == (len(data), 40)
    assert build["downloadUrl"] == f"{server.root_url}/agent/builds/{sha256_hex(data)}.pyz"
    assert fetch(build["downloadUrl"]) == (data, sha256_hex(data))
    # The onstart path: the type's build and its sha256; other types get the built-in one.
    query = f"?serverType={fleet.server_type}"
    assert fetch(f"{server.root_url}/agent/depman-agent.pyz{query}") == (data, sha256_hex(data))
    status, text = server.request("GET", f"/agent/depman-agent.pyz.sha256{query}")
    assert (status, text.strip()) == (200, sha256_hex(data))
    built_in, digest = fetch(f"{server.root_url}/agent/depman-agent.pyz?serverType=other")
    assert digest == sha256_hex(built_in) != sha256_hex(data)
    status, text = server.request("GET", "/agent/depman-agent.pyz.sha256")
    assert text.strip() == digest

    status, listing = server.admin("GET", "/admin/agent-builds")
    assert status == 200
    mine = [b for b in listing["builds"] if b["serverType"] == fleet.server_type]
    assert mine and mine[0]["sha256"] == build["sha256"]

    assert server.admin("DELETE", f"/admin/agent-builds/{fleet.server_type}")[0] == 204
    assert server.admin("GET", f"/admin/agent-builds/{fleet.server_type}")[0] == 404
    assert server.request("GET", f"/agent/builds/{sha256_hex(data)}.pyz")[0] == 404
    assert fetch(f"{server.root_url}/agent/depman-agent.pyz{query}")[1] == digest
    status, body = server.admin("DELETE", f"/admin/agent-builds/{fleet.server_type}")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_bad_builds_are_refused_with_a_clear_error(server: RunningServer) -> None:
    fleet = make_fleet(server)
    pyz = pyz_with("depman-agent/7.1.0")
    cases = [
        (fleet.server_type, b"", "", 422, "empty"),
        (fleet.server_type, b"#!/bin/sh\necho hi\n", "", 422, "--version"),
        (fleet.server_type, pyz, "?version=depman-agent/9", 422, "differs"),
        (fleet.server_type, pyz, "?rolloutPercent=101", 422, "rolloutPercent"),
        (uid("no-such-type"), pyz, "", 404, "does not exist"),
    ]
    for server_type, data, query, code, words in cases:
        status, body = publish(server, server_type, data, query)
        assert status == code, (query, body)
        assert words in body["error"]["message"] or words in str(body), body
    status, body = publish(server, fleet.server_type, b"x" * (32 * 1024**2 + 1))
    assert status == 413 and body["error"]["code"] == "too_large"
    # A field agent's script: not a zipapp, so its version is given.
    status, body = publish(server, fleet.server_type, b"print('agent')\n", "?version=0.10.2")
    assert (status, body["version"]) == (200, "0.10.2")
    for path in ("/agent/builds/nothex.pyz", f"/agent/builds/{'0' * 64}.pyz"):
        status, body = server.request("GET", path)
        assert status == 404 and body["error"]["code"] == "not_found"


# Its own server: the stages it expects hold only if no other test's instances are
# swept meanwhile (a sweep that writes rows of many instances drops every memo).
@pytest.mark.own_server
def test_agent_update_is_the_same_on_every_answer_path(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("upd"))
    data = pyz_with("depman-agent/7.2.0")
    status, build = publish(server, fleet.server_type, data)
    assert status == 200, build
    expected = {
        "targetVersion": "depman-agent/7.2.0",
        "downloadUrl": build["downloadUrl"],
        "sha256": sha256_hex(data),
    }
    # The publish dropped the heartbeat memos: the quick stage answers, then the memo; a
    # new inventory goes to the full stage; new disk figures alone to the quick stage.
    paths = []
    for step in ("same", "same", "inventory", "same", "figures"):
        if step == "inventory":
            agent.installed_dynamic = [fleet.deps["b"]]
        elif step == "figures":
            agent.free_bytes -= 1
        how, (status, body) = served_by(server, "heartbeat", agent.heartbeat)
        assert status == 200 and body["agentUpdate"] == expected, (how, body)
        paths.append(how)
    assert paths == ["quick", "memo", "full", "memo", "quick"], paths
    assert register(server, fleet, agent.instance_id, OLD)["agentUpdate"] == expected

    # An agent on the target version is offered nothing, on any path.
    body = register(server, fleet, agent.instance_id, "depman-agent/7.2.0")
    assert "agentUpdate" not in body
    updated = Agent(server, agent.instance_id, body["agentToken"])
    for _ in range(3):
        how, (status, answer) = served_by(server, "heartbeat", updated.heartbeat)
        assert status == 200 and "agentUpdate" not in answer, (how, answer)

    # Unpublishing takes the offer out of the memo'd answers at once.
    old = fleet.register(fleet.add_instance("old"))
    for _ in range(3):
        assert "agentUpdate" in old.heartbeat()[1]
    assert server.admin("DELETE", f"/admin/agent-builds/{fleet.server_type}")[0] == 204
    for _ in range(3):
        how, (status, answer) = served_by(server, "heartbeat", old.heartbeat)
        assert status == 200 and "agentUpdate" not in answer, (how, answer)


def test_rollout_percentage_picks_a_stable_share_of_the_type(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agents = [fleet.register(fleet.add_instance(f"roll{i}")) for i in range(12)]
    data = pyz_with("depman-agent/7.3.0")
    status, build = publish(server, fleet.server_type, data, "?rolloutPercent=0")
    assert status == 200, build
    assert build["instances"] == 12 and build["offered"] == 0

    def offered() -> set[str]:
        chosen = set()
        for agent in agents:
            answers = [agent.heartbeat()[1] for _ in range(2)]
            assert answers[0].get("agentUpdate") == answers[1].get("agentUpdate")
            if "agentUpdate" in answers[0]:
                chosen.add(agent.instance_id)
        return chosen

    assert offered() == set()
    status, body = server.admin(
        "PATCH", f"/admin/agent-builds/{fleet.server_type}", {"rolloutPercent": 50}
    )
    assert status == 200 and body["rolloutPercent"] == 50
    half = offered()
    assert half == {a.instance_id for a in agents if in_rollout(a.instance_id, 50)}
    assert body["offered"] == len(half)
    status, body = server.admin(
        "PATCH", f"/admin/agent-builds/{fleet.server_type}", {"rolloutPercent": 100}
    )
    assert offered() == {a.instance_id for a in agents}
    assert body["offered"] == 12 and body["onTarget"] == 0
    status, body = server.admin(
        "PATCH", f"/admin/agent-builds/{fleet.server_type}", {"rolloutPercent": -1}
    )
    assert status == 422


def test_a_field_agent_sees_agent_update_and_fetches_it(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("field")
    script = b"#!/usr/bin/env python3\nprint('field agent 0.10.3')\n"
    status, build = publish(server, fleet.server_type, script, "?version=0.10.3")
    assert status == 200, build
    client = V1Client(server.base_url, fleet.server_type, server.shared_secret, "0.6.0")
    update = client.register(instance_id=instance_id)["agentUpdate"]
    assert update["targetVersion"] == "0.10.3"
    assert client.heartbeat()["agentUpdate"] == update
    data, _digest = fetch(update["downloadUrl"])
    assert data == script and sha256_hex(data) == update["sha256"]


@pytest.mark.postgres
def test_a_publish_reaches_the_other_replica_s_memos(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    fleet = make_fleet(first)
    agent = fleet.register(fleet.add_instance("rep"))
    on_second = Agent(second, agent.instance_id, agent.token)
    for _ in range(3):
        assert "agentUpdate" not in on_second.heartbeat()[1]
    status, build = publish(first, fleet.server_type, pyz_with("depman-agent/7.4.0"))
    assert status == 200
    # The second replica hears of it by NOTIFY; its memo'd answer may lag that by a moment.
    for _ in range(200):
        answer = on_second.heartbeat()[1]
        if "agentUpdate" in answer:
            break
    assert answer["agentUpdate"]["sha256"] == build["sha256"]
    assert answer["agentUpdate"]["downloadUrl"].startswith(second.root_url)
    with run_replica(first) as third:  # a replica that starts later reads it from the table
        body = register(third, fleet, agent.instance_id, OLD)
        assert body["agentUpdate"]["sha256"] == build["sha256"]


@pytest.mark.server_env(DEPMAN_PUBLIC_URL="https://depman.example.com/")
def test_download_url_uses_the_public_url(server: RunningServer) -> None:
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("pub")
    data = pyz_with("depman-agent/7.5.0")
    status, build = publish(server, fleet.server_type, data)
    assert status == 200, build
    url = f"https://depman.example.com/agent/builds/{sha256_hex(data)}.pyz"
    assert build["downloadUrl"] == url
    assert register(server, fleet, instance_id, OLD)["agentUpdate"]["downloadUrl"] == url
