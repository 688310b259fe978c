"""How instances join: open enrolment, declared-only types, unknown server types."""

from __future__ import annotations

from typing import Any

from tests.server.fleet import Fleet, make_fleet, uid
from tests.support.server import RunningServer


def register(server: RunningServer, server_type: str, instance_id: str) -> tuple[int, Any]:
    return server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": server_type, "agentVersion": "v1", "instanceId": instance_id},
        {"X-DM-Secret": server.shared_secret},
    )


def set_enrollment(fleet: Fleet, enrollment: str) -> None:
    status, body = fleet.server.admin(
        "PUT",
        f"/admin/server-types/{fleet.server_type}",
        {"modelManagement": {"profileId": fleet.profile_id, "enrollment": enrollment}},
    )
    assert status == 200, body
    assert body["modelManagement"]["enrollment"] == enrollment


def test_undeclared_instance_of_an_open_type_enrols_and_gets_its_prefetch(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, static=["a"], prefetch=True)
    status, body = server.admin("GET", f"/admin/server-types/{fleet.server_type}")
    assert body["modelManagement"]["enrollment"] == "open"  # the default
    rental = uid("4242")
    status, body = register(server, fleet.server_type, rental)
    assert status == 200, body
    assert body["instanceId"] == rental
    status, instance = server.admin("GET", f"/admin/instances/{rental}")
    assert status == 200, instance
    assert instance["serverType"] == fleet.server_type
    status, queue = server.admin("GET", f"/admin/queues/{rental}/items")
    assert [i["depId"] for i in queue["items"]] == [fleet.deps["a"]]
    # Registering again finds the record it created.
    status, again = register(server, fleet.server_type, rental)
    assert status == 200 and again["instanceId"] == rental


def test_declared_type_refuses_an_undeclared_instance_saying_how_to_declare_it(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    set_enrollment(fleet, "declared")
    rental = uid("5151")
    status, body = register(server, fleet.server_type, rental)
    assert status == 404, body
    message = body["error"]["message"]
    assert "depman apply" in message
    assert f"PUT /api/admin/instances/{rental}" in message
    assert server.admin("GET", f"/admin/instances/{rental}")[0] == 404
    declared = fleet.add_instance("declared")
    assert register(server, fleet.server_type, declared)[0] == 200


def test_unknown_server_type_is_refused_naming_the_known_ones_and_changes_nothing(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    declared = fleet.add_instance("typo")
    status, body = register(server, "sdxl-wroker", declared)
    assert status == 422, body
    assert body["error"]["code"] == "unknown_server_type"
    assert fleet.server_type in body["error"]["message"]
    status, instance = server.admin("GET", f"/admin/instances/{declared}")
    assert instance["serverType"] == fleet.server_type
    assert instance["dependencyManager"].get("agentVersion") is None
    rental = uid("6161")
    assert register(server, "sdxl-wroker", rental)[0] == 422
    assert server.admin("GET", f"/admin/instances/{rental}")[0] == 404
    status, body = server.admin("PUT", f"/admin/instances/{rental}", {"serverType": "nope"})
    assert status == 422 and fleet.server_type in body["error"]["message"]
