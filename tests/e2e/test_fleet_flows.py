"""Real processes on loopback: server, origin and agents, through whole job and crash flows."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import (
    E2E_SERVER_ENV,
    MIB,
    Fleet,
    ModelFile,
    file_sha256,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.server_env(**E2E_SERVER_ENV)]

JOB_ORDER = ["pending", "waiting_deps", "ready", "running", "completed"]


def test_job_goes_from_pending_to_completed(fleet: Fleet) -> None:
    base = ModelFile("base", 6 * MIB, kind="static", route="redirect")
    lora = ModelFile("lora", 3 * MIB, route="private")
    fleet.apply([base, lora], ["node-1"], prefetch_on_boot=False)

    # No agent yet: no live instance, so the job waits unplaced.
    submitted = fleet.submit_job(["base", "lora"], job_id="job-1")
    assert submitted["state"] == "pending"
    assert not submitted.get("instanceId")

    fleet.start_agent("node-1")
    seen = ["pending"]
    job = fleet.wait_job("job-1", {"ready", "failed"}, timeout=40)
    seen.append(job["state"])
    assert job["state"] == "ready", fleet.logs()
    assert job["instanceId"] == "node-1"

    status, started = fleet.server.admin("POST", "/jobs/job-1/start", {})
    assert status == 200, started
    assert fleet.job("job-1")["state"] == "running"
    status, done = fleet.server.admin("POST", "/jobs/job-1/complete", {"ok": True})
    assert status == 200, done
    assert fleet.job("job-1")["state"] == "completed"

    # The heartbeat, not the status, says what is there; and the files are the real bytes.
    assert fleet.inventory("node-1") >= {"base", "lora"}
    for model in (base, lora):
        assert file_sha256(fleet.comfyui_path("node-1", model)) == model.sha256


def test_killed_agent_restarts_and_converges(fleet: Fleet) -> None:
    small = ModelFile("small", 2 * MIB, kind="static")
    # Throttled so the kill lands mid-download (about 3 s at 4 connections).
    big = ModelFile("big", 48 * MIB, kind="static", bps=4 * MIB)
    fleet.apply([small, big], ["node-1"], prefetch_on_boot=True)
    agent = fleet.start_agent("node-1")

    def big_in_flight() -> bool:
        dm = fleet.instance("node-1").get("dependencyManager") or {}
        return "big" in (dm.get("downloadingDepIds") or [])

    wait_until(big_in_flight, 30, "the big dep to be downloading")
    agent.kill()
    final = fleet.comfyui_path("node-1", big)
    assert not final.exists(), "a half download sits at the final path"

    fleet.start_agent("node-1")
    wait_until(
        lambda: fleet.inventory("node-1") >= {"small", "big"},
        60,
        "the restarted agent to report both static deps",
    )
    dm = fleet.instance("node-1")["dependencyManager"]
    assert sorted(dm["installedDepIdsStatic"]) == ["big", "small"]
    assert not dm.get("failedDepIds")
    for model in (small, big):
        assert file_sha256(fleet.comfyui_path("node-1", model)) == model.sha256
    assert not list(final.parent.glob("*.partial*")), "leftover partial files"
    # The restart resumed the partial download instead of starting it again from zero.
    served = httpx.get(fleet.origin.url + "/_stats").json()["bytesServed"]
    assert served < small.size + big.size * 3 // 2, served


def test_dep_failing_everywhere_fails_its_job_with_the_agents_error(fleet: Fleet) -> None:
    good = ModelFile("good", 2 * MIB)
    broken = ModelFile("broken", 2 * MIB, sha256_override="0" * 64)
    fleet.apply([good, broken], ["node-1", "node-2"], prefetch_on_boot=False)
    fleet.start_agent("node-1")
    fleet.start_agent("node-2")
    wait_until(
        lambda: all(
            (fleet.instance(i).get("dependencyManager") or {}).get("lastHeartbeatAt")
            for i in ("node-1", "node-2")
        ),
        30,
        "both agents to heartbeat",
    )

    fleet.submit_job(["good", "broken"], job_id="job-bad")
    job = fleet.wait_job("job-bad", {"failed", "ready", "completed"}, timeout=60)
    assert job["state"] == "failed", fleet.logs()
    assert "sha256 mismatch" in (job.get("error") or ""), job
    # It was tried on each instance in turn, and each failure kept the agent's message.
    failures = [h for h in job["history"] if h.get("event") == "dep_failed"]
    assert {h["instanceId"] for h in failures} == {"node-1", "node-2"}, job["history"]
    assert all(h.get("depId") == "broken" for h in failures)
    assert all("sha256 mismatch" in h.get("reason", "") for h in failures), failures



def _lose_a_file_while_down(fleet: Fleet, lost_model: ModelFile, kept: ModelFile) -> None:
    """Prefetch both, kill the agent, delete one file, restart: the heartbeat tells the truth."""
    fleet.apply([lost_model, kept], ["node-1"], prefetch_on_boot=True)
    agent = fleet.start_agent("node-1")
    wait_until(
        lambda: fleet.inventory("node-1") >= {lost_model.dep_id, kept.dep_id}, 30, "the prefetch"
    )
    agent.kill()
    fleet.comfyui_path("node-1", lost_model).unlink()  # someone cleaned the disk meanwhile
    fleet.start_agent("node-1")


def test_file_lost_while_the_agent_was_down_is_reported_and_fetched_for_a_job(
    fleet: Fleet,
) -> None:
    lost, kept = ModelFile("lost", 2 * MIB, kind="static"), ModelFile("kept", 3 * MIB, "static")
    _lose_a_file_while_down(fleet, lost, kept)
    # The restarted agent's heartbeat reports what is really on disk, so the server
    # queues the static dep again (generation 2); its receipt puts it back in the
    # inventory within milliseconds, too fast to catch the inventory without it.
    def requeued() -> bool:
        status, body = fleet.server.admin("GET", "/admin/queues/node-1/items")
        assert status == 200, body
        return any(i["itemId"] == "lost.2" for i in body["items"])

    wait_until(requeued, 15, "the lost dep to be queued again")
    # A job that needs it becomes ready once it is back, with the right bytes.
    fleet.submit_job(["lost", "kept"], job_id="job-heal")
    job = fleet.wait_job("job-heal", {"ready", "failed"}, timeout=30)
    assert job["state"] == "ready", fleet.logs()
    assert fleet.inventory("node-1") >= {"lost", "kept"}
    assert file_sha256(fleet.comfyui_path("node-1", lost)) == lost.sha256


def test_static_dep_lost_while_the_agent_was_down_is_prefetched_again(fleet: Fleet) -> None:
    lost, kept = ModelFile("lost", 2 * MIB, kind="static"), ModelFile("kept", 3 * MIB, "static")
    _lose_a_file_while_down(fleet, lost, kept)
    path = fleet.comfyui_path("node-1", lost)
    wait_until(
        lambda: path.is_file() and fleet.inventory("node-1") >= {"lost", "kept"},
        10,
        "the lost static dep to be prefetched again",
    )
