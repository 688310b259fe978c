"""An idle agent's requests to a real server, counted at a TCP relay in front of it.

The agent opens one connection per control-plane request, so the relay's accept
count is its request count. Before the fix an idle agent sent thousands of queue
requests a minute (a zero wait in the last second before every heartbeat).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.agent.relay import Relay
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import put, setup_fleet

pytest.importorskip("depman.server")

IDLE_BUDGET_PER_MINUTE = 10
WATCH_SECONDS = 75.0
BOOT_REQUESTS = 3  # register, first heartbeat, first queue poll


def busiest_minute(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 60) for t in times), default=0)


@pytest.mark.slow
def test_idle_agent_sends_at_most_ten_requests_a_minute(server: Any,
                                                        tmp_path: Path) -> None:
    setup_fleet(server, {}, [])
    put(server, "/admin/instances/i2", {"ip": "10.0.0.2", "serverType": "st"})
    port = int(server.root_url.rsplit(":", 1)[1])
    settings = {
        "defaults": {},
        # The short settings that made it spin, and a fast heartbeat.
        "short": {"DM_LONG_POLL_SECONDS": "1", "DM_POLL_SECONDS": "0.1",
                  "DM_HEARTBEAT_SECONDS": "20", "DM_PROGRESS_SECONDS": "1"},
    }
    with Relay(port) as relay_a, Relay(port) as relay_b:
        relays = {"defaults": relay_a, "short": relay_b}
        agents = {
            name: AgentProcess({
                "FCS_API_BASE_URL": relays[name].url("/api"), "SERVER_TYPE": "st",
                "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret,
                "DM_INSTANCE_ID": "i1" if name == "defaults" else "i2",
                "WORKSPACE": str(tmp_path / name), **env})
            for name, env in settings.items()}
        with agents["defaults"] as first, agents["short"] as second:
            first.wait_for_line("Registered dependency agent")
            second.wait_for_line("Registered dependency agent")
            threading.Event().wait(WATCH_SECONDS)  # idle on purpose: we count, not time
            assert first.proc is not None and first.proc.poll() is None
            assert second.proc is not None and second.proc.poll() is None
    for name, relay in relays.items():
        idle = relay.accepted_at[BOOT_REQUESTS:]
        assert len(idle) >= 3, (name, relay.accepted)  # it did keep polling
        assert busiest_minute(idle) <= IDLE_BUDGET_PER_MINUTE, (name, relay.accepted)
