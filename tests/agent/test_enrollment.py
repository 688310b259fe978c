"""A rental nobody declared: it enrols itself, or is refused loudly and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import dep, put
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until


def rental_env(server: Any, tmp_path: Path, server_type: str, container_id: str) -> dict[str, str]:
    """What the printed on-start script sets on a Vast.ai rental: no instance id of its own."""
    return {
        "FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": server_type,
        "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret, "CONTAINER_ID": container_id,
        "WORKSPACE": str(tmp_path / f"ws-{container_id}"),
        "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
        "DM_HEARTBEAT_SECONDS": "5", "DM_POLL_SECONDS": "0.5",
    }


def test_undeclared_rental_enrols_and_prefetches_its_static_deps(
    server: Any, tmp_path: Path
) -> None:
    data, _ = payload(64 * 1024)
    with ModelOrigin() as origin:
        origin.add("/m/base.safetensors", data)
        put(server, "/admin/deps/base", dep(origin, "/m/base.safetensors",
                                                   "models/checkpoints/base.safetensors", data))
        put(server, "/admin/profiles/core", {"staticDepIds": ["base"],
                                                    "prefetchOnBoot": True})
        put(server, "/admin/server-types/sdxl-worker",
            {"modelManagement": {"profileId": "core"}})
        with AgentProcess(rental_env(server, tmp_path, "sdxl-worker", "4242")) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=4242")

            def held() -> Any:
                status, body = server.admin("GET", "/admin/instances/4242")
                return status == 200 and body["dependencyManager"].get("installedDepIdsStatic")

            assert wait_until(lambda: held() == ["base"], 30), agent.log()
    _, body = server.admin("GET", "/admin/instances/4242")
    assert body["serverType"] == "sdxl-worker"
    target = tmp_path / "ws-4242/ComfyUI/models/checkpoints/base.safetensors"
    assert target.read_bytes() == data


def test_unknown_type_and_declared_only_type_are_refused_once_in_the_log(
    server: Any, tmp_path: Path
) -> None:
    put(server, "/admin/profiles/core", {"staticDepIds": [], "prefetchOnBoot": True})
    put(server, "/admin/server-types/sdxl-worker",
        {"modelManagement": {"profileId": "core", "enrollment": "declared"}})
    with AgentProcess(rental_env(server, tmp_path, "sdxl-wroker", "5151")) as agent:
        line = agent.wait_for_line(r"Register failed: .*")
        assert "known server types: sdxl-worker" in line.group(0)
        assert "SERVER_TYPE" in line.group(0)
        assert agent.proc is not None and agent.proc.poll() is None  # backs off, keeps trying
    with AgentProcess(rental_env(server, tmp_path, "sdxl-worker", "5152")) as agent:
        line = agent.wait_for_line(r"Register failed: .*")
        assert "depman apply" in line.group(0)
        assert "PUT /api/admin/instances/5152" in line.group(0)
        assert "declare this instance" in line.group(0)
        assert server.admin("GET", "/admin/instances/5151")[0] == 404
        assert server.admin("GET", "/admin/instances/5152")[0] == 404
        # The fix is on the server: once declared, the agent's next attempt registers.
        put(server, "/admin/instances/5152", {"serverType": "sdxl-worker"})
        agent.wait_for_line(r"Registered dependency agent: instanceId=5152", timeout=90)
        agent.wait_for_line(r"Recovered: register")
    assert agent.log().count("Register failed") == 1  # logged once, however many attempts
