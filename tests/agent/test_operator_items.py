"""depman's own agent honours an operator's cancel, forced retry and delete, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, dep, instance, items, setup_fleet
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

MiB = 1024 * 1024


def act(server: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = server.request(
        "POST", "/api" + path, body,
        {"Authorization": f"Bearer {server.admin_token}", "X-Depman-Actor": "ops@test"})
    assert status == 200, (path, status, answer)
    return dict(answer)


@pytest.mark.server_env(DEPMAN_JOB_MAX_PLACEMENTS="1")
def test_agent_cancels_retries_and_deletes_as_the_operator_asks(
    server: Any, tmp_path: Path
) -> None:
    keep, _ = payload(64 * 1024)
    good, _ = payload(96 * 1024)
    slow, _ = payload(8 * MiB)
    comfy = tmp_path / "ws/ComfyUI"
    with ModelOrigin() as origin:
        origin.add("/hf/keep.bin", keep)
        flaky = origin.add("/hf/flaky.bin", good, corrupt="always")
        origin.add("/hf/slow.bin", slow, rate=128 * 1024)
        setup_fleet(server, {
            "keep": dep(origin, "/hf/keep.bin", "models/vae/keep.safetensors", keep),
            "flaky": dep(origin, "/hf/flaky.bin", "models/loras/flaky.safetensors", good),
            "slow": dep(origin, "/hf/slow.bin", "models/checkpoints/slow.safetensors", slow,
                        kind="dynamic"),
        }, static=["keep", "flaky"])
        with AgentProcess(agent_env(server, tmp_path, DM_DOWNLOAD_CONNECTIONS="1")) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=i1")
            assert wait_until(lambda: items(server).get("flaky", {}).get("state") == "failed"
                              and items(server).get("keep", {}).get("state") == "succeeded", 60)

            # Cancel a running download: the agent stops it and reports cancelled.
            status, job = server.admin("POST", "/jobs", {"serverType": "st",
                                                         "depIds": ["slow"], "jobId": "j-slow"})
            assert status == 200, job
            assert wait_until(lambda: any(
                d.get("depId") == "slow" and d.get("downloadedBytes", 0) > 0
                for d in instance(server).get("activeDownloads", [])), 30), instance(server)
            progress = next(d for d in instance(server)["activeDownloads"]
                            if d["depId"] == "slow")
            assert progress["tool"] == "depman-agent" and progress["expectedBytes"] == len(slow)
            act(server, "/admin/queues/i1/items/slow/cancel", {"reason": "not this one"})
            assert wait_until(lambda: items(server)["slow"]["state"] == "cancelled", 30), \
                items(server)["slow"]
            assert "not this one" in items(server)["slow"]["error"]
            _, failed_job = server.admin("GET", "/jobs/j-slow")
            assert failed_job["state"] == "failed" and "not this one" in failed_job["error"]
            assert not (comfy / "models/checkpoints/slow.safetensors").exists()
            agent.wait_for_line(r"cancelled by the operator: not this one")

            # Retry the failed one now, once the origin serves it right.
            flaky.corrupt = None
            act(server, "/admin/queues/i1/items/flaky/retry", {})
            assert wait_until(lambda: items(server)["flaky"]["state"] == "succeeded", 30), \
                items(server)["flaky"]
            assert wait_until(lambda: "flaky" in instance(server)["installedDepIdsStatic"], 20)

            # Delete a static dep (with force): the file goes, the inventory follows.
            act(server, "/admin/instances/i1/deps/keep/delete", {"force": True})
            assert wait_until(lambda: items(server)["keep"]["state"] == "succeeded"
                              and items(server)["keep"]["op"] == "delete", 30), items(server)
            assert not (comfy / "models/vae/keep.safetensors").exists()
            assert wait_until(lambda: instance(server)["installedDepIdsStatic"] == ["flaky"], 20)
            assert agent.stop() == 0
