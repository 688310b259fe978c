"""Upstream caps over the protocol: hand-out leases, waiting items, fleet-wide slots.

v1 agents (no `running` report needed) on SQLite and PostgreSQL; the mirror-fill
slot is taken from this test process on the server's own database.
"""

from __future__ import annotations

from typing import Any

import pytest

from depman.core.clock import utcnow
from depman.core.upstream import UpstreamGate, release_slot, take_slot
from depman.store.session import create_db_engine
from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer


def poll_items(agent: Agent) -> list[dict[str, Any]]:
    status, body = agent.poll()
    assert status == 200, body
    return list(body["items"])


@pytest.mark.server_env(
    DEPMAN_UPSTREAM_CONCURRENCY="huggingface.co=1", DEPMAN_UPSTREAM_LEASE_SECONDS="600"
)
def test_one_slot_is_handed_out_kept_by_polls_and_freed_by_the_report(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, sizes={"a": (1000, "static")}, static=["a"], prefetch=True)
    first = fleet.register(fleet.add_instance("cap-a"))
    second = fleet.register(fleet.add_instance("cap-b"))
    dep = fleet.deps["a"]
    [item] = poll_items(first)
    # The host's one slot is taken: the other instance's item waits, shown as such.
    assert poll_items(second) == []
    waiting = second.items()[dep]
    assert waiting["state"] == "queued" and waiting["waitingForUpstream"] == "huggingface.co"
    assert first.items()[dep]["waitingForUpstream"] is None
    # A v1 agent that has not reported `running` keeps its slot by polling again.
    assert [i["itemId"] for i in poll_items(first)] == [item["itemId"]]
    assert poll_items(second) == []
    # The mirror fill cannot take the host's slot either, nor any other holder's.
    engine = create_db_engine(server.database_url, pool_size=2)
    try:
        gate = UpstreamGate(caps={"huggingface.co": 1}, lease_seconds=600, begin=engine.begin)
        assert take_slot(gate, "huggingface.co", "mirror:x", now=utcnow()) is False
        assert take_slot(gate, "civitai.com", "mirror:y", now=utcnow()) is True  # not capped
        assert take_slot(None, "huggingface.co", "mirror:z", now=utcnow()) is True  # no caps
        # The report frees the slot: the waiting item is handed out.
        assert first.status(item, "succeeded")[0] == 200
        [handed] = poll_items(second)
        assert handed["depId"] == dep
        assert second.items()[dep]["waitingForUpstream"] is None
        assert second.status(handed, "running")[0] == 200
        assert second.status(handed, "succeeded")[0] == 200
        # Now the mirror takes it, and a new queue item waits behind the mirror.
        assert take_slot(gate, "huggingface.co", "mirror:x", now=utcnow()) is True
        assert take_slot(gate, "huggingface.co", "mirror:x", now=utcnow()) is True  # renewed
        third = fleet.register(fleet.add_instance("cap-c"))
        assert poll_items(third) == []
        assert third.items()[dep]["waitingForUpstream"] == "huggingface.co"
        release_slot(gate, "mirror:x")
        assert [i["depId"] for i in poll_items(third)] == [dep]
    finally:
        engine.dispose()


@pytest.mark.server_env(
    DEPMAN_UPSTREAM_CONCURRENCY="huggingface.co=1", DEPMAN_UPSTREAM_LEASE_SECONDS="1"
)
def test_a_silent_holder_loses_its_slot_when_the_lease_lapses(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, sizes={"a": (1000, "static")}, static=["a"], prefetch=True)
    gone = fleet.register(fleet.add_instance("lease-a"))
    other = fleet.register(fleet.add_instance("lease-b"))
    assert len(poll_items(gone)) == 1  # taken, never reported, never polled again
    assert poll_items(other) == []
    status, body = other.poll(wait=5)  # waits; the lapsed lease lets it through
    got: list[dict[str, Any]] = list(body["items"]) if status == 200 else []
    while not got:
        got = poll_items(other)
    assert got[0]["depId"] == fleet.deps["a"]


def test_uncapped_polls_carry_no_upstream_state(server: RunningServer) -> None:
    fleet = make_fleet(server, sizes={"a": (1000, "static")}, static=["a"], prefetch=True)
    agents = [fleet.register(fleet.add_instance(f"free-{n}")) for n in range(2)]
    for agent in agents:
        assert len(poll_items(agent)) == 1
        assert agent.items()[fleet.deps["a"]]["waitingForUpstream"] is None
