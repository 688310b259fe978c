"""DEPMAN_UPSTREAM_CONCURRENCY with real agents: never more downloads from a host than its cap.

Three depman agents (real processes, a workspace each) boot a profile of three
files served by one loopback origin, capped at one download in flight. The
origin counts the bodies it serves at once; the items that wait are shown as
waiting for the upstream, and every one completes.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, dep, put
from tests.support.origin import ModelOrigin
from tests.support.server import RunningServer
from tests.support.wait import wait_until

KiB = 1024
INSTANCES = ["cap-1", "cap-2", "cap-3"]
FILES = ["f0", "f1", "f2"]


def queue(server: RunningServer, instance_id: str) -> dict[str, dict[str, Any]]:
    status, body = server.admin("GET", f"/admin/queues/{instance_id}/items")
    assert status == 200, body
    return {item["depId"]: item for item in body["items"]}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.server_env(DEPMAN_UPSTREAM_CONCURRENCY="127.0.0.1=1")
def test_three_agents_share_one_upstream_slot(server: RunningServer, tmp_path: Path) -> None:
    files = {name: payload(384 * KiB, seed=i)[0] for i, name in enumerate(FILES)}
    with ModelOrigin() as origin:
        for name, data in files.items():
            # Slow enough that downloads would overlap without the cap.
            origin.add(f"/up/{name}.bin", data, rate=1024 * KiB)
        for name, data in files.items():
            put(
                server,
                f"/admin/deps/{name}",
                dep(origin, f"/up/{name}.bin", f"models/loras/{name}.safetensors", data),
            )
        put(
            server,
            "/admin/profiles/capped",
            {"staticDepIds": FILES, "prefetchOnBoot": True, "dynamicPolicy": {"enabled": False}},
        )
        put(
            server,
            "/admin/server-types/st",
            {"modelManagement": {"mode": "dependency_manager_v1", "profileId": "capped"}},
        )
        for iid in INSTANCES:
            put(server, f"/admin/instances/{iid}", {"ip": "10.0.0.9", "serverType": "st"})

        waiting_seen: set[str] = set()

        def all_done() -> bool:
            done = True
            for iid in INSTANCES:
                items = queue(server, iid)
                for item in items.values():
                    if item.get("waitingForUpstream"):
                        assert item["state"] == "queued", item
                        waiting_seen.add(item["waitingForUpstream"])
                done = (
                    done
                    and len(items) == 3
                    and all(i["state"] == "succeeded" for i in items.values())
                )
            return done

        with ExitStack() as stack:
            agents = [
                stack.enter_context(
                    AgentProcess(
                        agent_env(
                            server,
                            tmp_path,
                            DM_INSTANCE_ID=iid,
                            WORKSPACE=str(tmp_path / iid),
                            DM_DOWNLOAD_CONNECTIONS="1",
                            DM_MIN_SEGMENT_BYTES="64MiB",
                        )
                    )
                )
                for iid in INSTANCES
            ]
            assert wait_until(all_done, 180, interval=0.1), {i: queue(server, i) for i in INSTANCES}
            for agent in agents:
                assert "Traceback" not in agent.log()
        assert origin.max_serving == 1
        assert waiting_seen == {"127.0.0.1"}
    for iid in INSTANCES:
        for name, data in files.items():
            target = tmp_path / iid / "ComfyUI" / "models" / "loras" / f"{name}.safetensors"
            assert (
                hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
            )
