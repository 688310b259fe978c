"""Lost instances: a silent agent's jobs move to a live instance, its queue and pins go."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depman.demo.launch import AgentSpec, Service, start_agent, start_origin
from depman.demo.processes import ChildProcess
from tests.e2e.conftest import ModelFile
from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer, run_server
from tests.support.wait import wait_until

# Lost after 3 s of silence, swept every 0.3 s; live (for placement) the same 3 s.
LOST_ENV = {
    "DEPMAN_INSTANCE_LOST_SECONDS": "3",
    "DEPMAN_LIVE_TTL_SECONDS": "3",
    "DEPMAN_HEARTBEAT_SECONDS": "1",
    "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.3",
}


def job(server: RunningServer, job_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", f"/jobs/{job_id}")
    assert status == 200, body
    return dict(body)


@pytest.mark.server_env(**LOST_ENV)
def test_a_silent_instance_is_lost_and_its_jobs_move(server: RunningServer) -> None:
    fleet = make_fleet(server, max_active_jobs=3)
    b = fleet.deps["b"]
    silent = fleet.register(fleet.add_instance("silent"), static=[fleet.deps["a"]])
    waiting = fleet.submit(["b"])[1]
    ready = fleet.submit(["a"])[1]
    running = fleet.submit(["a"])[1]
    assert {waiting["instanceId"], ready["instanceId"], running["instanceId"]} == {
        silent.instance_id
    }
    assert job(server, ready["jobId"])["state"] == "ready"
    assert server.admin("POST", f"/jobs/{running['jobId']}/start")[0] == 200
    spare = fleet.register(fleet.add_instance("spare"))
    # The silent one stops talking; the spare keeps heartbeating.
    moved = wait_until(
        lambda: (
            spare.heartbeat()[0] == 200
            and job(server, waiting["jobId"])["instanceId"] == spare.instance_id
        ),
        30, "the waiting job to move to the spare instance",
    )
    assert moved
    after = job(server, waiting["jobId"])
    assert after["state"] == "waiting_deps" and after["missingDepIds"] == [b]
    lost_entry = next(h for h in after["history"] if h["event"] == "instance_lost")
    assert lost_entry["instanceId"] == silent.instance_id
    assert "no heartbeat for 3s" in lost_entry["reason"]
    assert job(server, ready["jobId"])["instanceId"] == spare.instance_id
    failed = job(server, running["jobId"])
    assert failed["state"] == "failed" and failed["error"] == "instance lost"
    # Its open items were cancelled, its pins released; the views say lost.
    assert silent.items()[b]["state"] == "cancelled"
    status, doc = server.admin("GET", f"/admin/instances/{silent.instance_id}")
    assert status == 200 and doc["lost"] is True and doc["live"] is False
    assert doc["dependencyManager"]["pinnedDepIds"] == []
    # The agent comes back: its old token is void; it registers and starts clean.
    assert silent.heartbeat()[0] == 401
    back = fleet.register(silent.instance_id, static=[fleet.deps["a"]])
    assert back.poll()[1]["items"] == []
    status, doc = server.admin("GET", f"/admin/instances/{silent.instance_id}")
    assert doc["lost"] is False and doc["live"] is True


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Service]:
    service = start_origin(tmp_path / "logs", "hf_lost_token")
    try:
        yield service
    finally:
        service.process.stop()


@pytest.mark.slow
@pytest.mark.server_env(**LOST_ENV)
def test_killing_an_agent_moves_its_waiting_job_to_the_other_live_instance(
    server: RunningServer, origin: Service, tmp_path: Path
) -> None:
    # Throttled, so the job is still waiting for it when its agent dies.
    big = ModelFile("big", 8 * 1024 * 1024, bps=256 * 1024)
    assert server.admin("PUT", "/admin/deps/big", big.catalog_entry(origin.url))[0] == 200
    profile = {"staticDepIds": [], "prefetchOnBoot": False, "dynamicPolicy": {"enabled": False}}
    assert server.admin("PUT", "/admin/profiles/lost", profile)[0] == 200
    doc = {"modelManagement": {"mode": "dependency_manager_v1", "profileId": "lost"}}
    assert server.admin("PUT", "/admin/server-types/lost-type", doc)[0] == 200
    for iid in ("node-1", "node-2"):
        body = {"ip": "127.0.0.1", "serverType": "lost-type"}
        assert server.admin("PUT", f"/admin/instances/{iid}", body)[0] == 200
    agents: dict[str, ChildProcess] = {}

    def start(iid: str) -> None:
        spec = AgentSpec(
            instance_id=iid,
            server_type="lost-type",
            api_base_url=server.base_url,
            shared_secret=server.shared_secret,
            workspace=tmp_path / "instances" / iid,
            heartbeat_seconds=1,
        )
        agents[iid] = start_agent(spec, tmp_path / "logs")

    try:
        start("node-1")
        wait_until(lambda: instance(server, "node-1")["live"], 30, "node-1 to be live")
        status, submitted = server.admin(
            "POST", "/jobs", {"serverType": "lost-type", "depIds": ["big"]}
        )
        assert status == 200 and submitted["instanceId"] == "node-1", submitted
        start("node-2")
        wait_until(lambda: instance(server, "node-2")["live"], 30, "node-2 to be live")
        assert job(server, submitted["jobId"])["state"] == "waiting_deps"
        agents["node-1"].kill()  # SIGKILL: no goodbye
        moved = wait_until(
            lambda: job(server, submitted["jobId"])["instanceId"] == "node-2",
            30, "the waiting job to move to node-2",
        )
        assert moved
        history = job(server, submitted["jobId"])["history"]
        assert [h["event"] for h in history][-2:] == ["instance_lost", "placed"]
        assert instance(server, "node-1")["lost"] is True
        # The job completes its download on node-2.
        done = wait_until(
            lambda: job(server, submitted["jobId"])["state"] == "ready", 60, "the job to be ready"
        )
        assert done
        # node-1 comes back: it registers again and is live, not lost.
        start("node-1")
        wait_until(lambda: instance(server, "node-1")["live"], 30, "node-1 to be live again")
        assert instance(server, "node-1")["lost"] is False
    finally:
        for agent in agents.values():
            agent.stop()


def instance(server: RunningServer, instance_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, body
    return dict(body)



def sweeps(server: RunningServer) -> float:
    """How many maintenance sweeps the server has finished."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    found = re.search(r'^depman_periodic_task_seconds_count\{task="sweep"\} ([\d.e+]+)$',
                      str(text), re.M)
    return float(found.group(1)) if found else 0.0


def is_lost(server: RunningServer, instance_id: str) -> bool:
    status, doc = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, doc
    return bool(doc["lost"])


@pytest.mark.server_env(**LOST_ENV)
def test_an_agent_that_registers_again_after_a_loss_is_not_lost_before_its_first_heartbeat(
    server: RunningServer,
) -> None:
    # On a loaded server the first heartbeat after a registration can come seconds
    # later; meanwhile the row still holds the heartbeat time from before the loss.
    fleet = make_fleet(server)
    instance_id = fleet.add_instance("back")
    fleet.register(instance_id)
    assert wait_until(lambda: is_lost(server, instance_id), 30, "the silent instance to be lost")
    registered = time.monotonic()
    back = fleet.register_only(instance_id)
    # Two sweeps (every 0.3 s) within the 3 s a registration counts as a sign of life.
    seen = sweeps(server)
    wait_until(lambda: sweeps(server) >= seen + 2, 10, "two more sweeps")
    assert time.monotonic() - registered < 3, "too slow to tell: the 3 s have passed"
    assert not is_lost(server, instance_id)
    assert back.heartbeat()[0] == 200
    # Silent again past the 3 s: lost again, as any silent instance.
    assert wait_until(lambda: is_lost(server, instance_id), 30, "the instance to be lost again")
    assert back.heartbeat()[0] == 401


# Lost after 5 s of silence: long enough for a restarted server to sweep twice first.
OUTAGE_ENV = {
    **LOST_ENV,
    "DEPMAN_INSTANCE_LOST_SECONDS": "5",
    "DEPMAN_LIVE_TTL_SECONDS": "5",
    "DEPMAN_RUNNING_TIMEOUT_SECONDS": "5",
}


def test_a_server_back_from_an_outage_loses_nobody_before_its_agents_can_reach_it(
    database_url: str, tmp_path: Path
) -> None:
    with run_server(database_url, extra_env=OUTAGE_ENV, cwd=tmp_path) as first:
        fleet = make_fleet(first, max_active_jobs=2)
        instance_id = fleet.add_instance("outage")
        agent = fleet.register(instance_id, static=[fleet.deps["a"]])
        running = fleet.submit(["a"])[1]
        assert first.admin("POST", f"/jobs/{running['jobId']}/start")[0] == 200
        # A download of another job's dep is under way when the server goes down.
        waiting = fleet.submit(["b"])[1]
        assert waiting["instanceId"] == instance_id
        item = agent.poll()[1]["items"][0]
        assert agent.status(item, "running")[0] == 200
    # The control plane stays down past instance_lost_seconds: every row's last
    # heartbeat is older than that when it comes back.
    time.sleep(6)
    with run_server(database_url, extra_env=OUTAGE_ENV, cwd=tmp_path) as second:
        started = time.monotonic()
        wait_until(lambda: sweeps(second) >= 2, 10, "two sweeps of the restarted server")
        assert time.monotonic() - started < 4, "too slow to tell: the 5 s have nearly passed"
        assert not is_lost(second, instance_id)
        assert job(second, running["jobId"])["state"] == "running"
        assert job(second, waiting["jobId"])["state"] == "waiting_deps"
        back = Agent(second, instance_id, agent.token, installed_static=[fleet.deps["a"]])
        assert back.items()[fleet.deps["b"]]["state"] == "running"
        # The agent reaches it with the token it had: nothing to redo.
        assert back.heartbeat(downloadingDepIds=[fleet.deps["b"]])[0] == 200
        # From here on the server listens: a silence counts as before.
        assert wait_until(lambda: is_lost(second, instance_id), 30, "the silent instance lost")
        assert job(second, running["jobId"])["state"] == "failed"


@contextlib.contextmanager
def heartbeating(agents: list[Agent]) -> Iterator[None]:
    """The agents heartbeat every 0.5 s (with the tokens they have) until the block ends."""
    stop = threading.Event()
    answers: list[int] = []

    def beat() -> None:
        while not stop.wait(0.5):
            answers.extend(agent.heartbeat()[0] for agent in agents)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    assert set(answers) <= {200}, answers


# Lost after 3 s of silence, but a silence of most of the fleet is waited out for 15 s.
WIDE_ENV = {**LOST_ENV, "DEPMAN_LOST_WIDE_SILENCE_SECONDS": "15"}


@pytest.mark.server_env(**WIDE_ENV)
def test_a_wide_silence_is_waited_out_and_its_agents_get_the_whole_timeout_after_it(
    server: RunningServer,
) -> None:
    # A control plane cut off from its fleet for a few minutes (its uplink, a proxy)
    # hears no heartbeat from anyone: losing everyone would fail every running job and
    # make every agent register again at once when the link comes back.
    fleet = make_fleet(server)
    static = [fleet.deps["a"]]
    agents = [fleet.register(fleet.add_instance(f"wide{i}"), static=static) for i in range(12)]
    running = fleet.submit(["a"])[1]
    assert server.admin("POST", f"/jobs/{running['jobId']}/start")[0] == 200
    holder = next(a for a in agents if a.instance_id == running["instanceId"])
    late, gone = [a for a in agents if a is not holder][:2]
    for agent in agents:
        assert agent.heartbeat()[0] == 200
    silent_since = time.monotonic()  # every agent falls silent

    def silence() -> float:
        return time.monotonic() - silent_since

    seen = sweeps(server)
    wait_until(lambda: silence() > 4.5 and sweeps(server) >= seen + 3, 20,
               "sweeps past the 3 s of silence")
    assert not any(is_lost(server, a.instance_id) for a in agents)
    assert job(server, running["jobId"])["state"] == "running"
    assert silence() < 15, "too slow to tell: the 15 s have passed"
    assert wait_until(
        lambda: "12 of 12 registered instances quiet at once" in server.logs(), 10,
        "the wide silence logged",
    )

    # The link is back: the agents reach the server with the tokens they had, and go
    # on heartbeating. The silence is no longer wide; two agents are still silent.
    with heartbeating([a for a in agents if a not in (late, gone)]):
        back = time.monotonic()
        # One reconnects 2 s later, within the 3 s counted from the silence's last sweep.
        time.sleep(2)
        assert late.heartbeat()[0] == 200
        assert wait_until(lambda: is_lost(server, gone.instance_id), 20,
                          "the one still silent lost")
        assert time.monotonic() - back > 2.5  # its whole 3 s, from the silence's last sweep
        assert silence() < 15, "too slow to tell: the 15 s have passed"
        assert not is_lost(server, late.instance_id) and not is_lost(server, holder.instance_id)
        assert job(server, running["jobId"])["state"] == "running"

    # Silent together again: lost once the 15 s a wide silence is given have passed.
    again = time.monotonic()
    assert wait_until(lambda: all(is_lost(server, a.instance_id) for a in agents), 60,
                      "the second wide silence lost")
    assert time.monotonic() - again > 13
    assert job(server, running["jobId"])["state"] == "failed"
    assert holder.heartbeat()[0] == 401
