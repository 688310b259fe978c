"""Two replicas on one PostgreSQL: NOTIFY wakes a long-poll on the other; SIGTERM stops cleanly.
Plus: the migrations match the models."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from alembic import command

from depman.store.migrate import alembic_config, upgrade
from tests.server.fleet import make_fleet
from tests.support.server import RunningServer, postgres_database, run_server


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when models.py and the revisions differ


@pytest.mark.postgres
def test_long_poll_on_one_replica_wakes_on_enqueue_through_another(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    fleet = make_fleet(first)
    agent = fleet.register(fleet.add_instance("replica"))
    result: dict[str, object] = {}

    def poll() -> None:
        start = time.monotonic()
        result["answer"] = agent.poll(wait=20)
        result["elapsed"] = time.monotonic() - start

    before = first.long_polls_waiting()
    thread = threading.Thread(target=poll)
    thread.start()
    first.await_long_polls(before)
    status, job = second.admin(
        "POST", "/jobs", {"serverType": fleet.server_type, "depIds": [fleet.deps["b"]]}
    )
    assert status == 200 and job["instanceId"] == agent.instance_id
    thread.join(25)
    status, body = result["answer"]  # type: ignore[misc]
    assert status == 200 and [i["depId"] for i in body["items"]] == [fleet.deps["b"]]
    assert result["elapsed"] < 5  # type: ignore[operator]
    # SIGTERM releases a long-poll at once; lifespan shutdown runs, then uvicorn
    # re-raises the signal (exit -15).
    waiting = make_fleet(second)
    sleeper = waiting.register(waiting.add_instance("sleeper"))
    sleeper.server = second
    before = second.long_polls_waiting()
    thread = threading.Thread(target=lambda: result.update(last=sleeper.poll(wait=25)))
    thread.start()
    second.await_long_polls(before)
    start = time.monotonic()
    second.process.send_signal(signal.SIGTERM)
    thread.join(15)
    assert result["last"][0] == 200  # type: ignore[index]
    assert time.monotonic() - start < 4
    assert second.process.wait(15) in (0, -signal.SIGTERM)
    deadline = time.monotonic() + 5
    while "Application shutdown complete" not in second.logs():
        assert time.monotonic() < deadline, second.logs()
        time.sleep(0.05)


@pytest.mark.postgres
def test_v1_poll_on_one_replica_sees_an_item_queued_through_another(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    """Replica A remembers the instance's empty queue; B's enqueue (NOTIFY) must end that."""
    first, second = replicas
    fleet = make_fleet(first)
    agent = fleet.register(fleet.add_instance("hinted"))
    for _ in range(3):  # A now answers this instance's polls from memory
        status, body = agent.poll()
        assert status == 200 and body["items"] == []
    status, job = second.admin(
        "POST", "/jobs", {"serverType": fleet.server_type, "depIds": [fleet.deps["c"]]}
    )
    assert status == 200 and job["instanceId"] == agent.instance_id
    # NOTIFY reaches A within milliseconds; a missed one would hide the item for
    # the hint's lifetime (60 s), far beyond this deadline.
    deadline = time.monotonic() + 10
    while True:
        status, body = agent.poll()
        assert status == 200
        if body["items"]:
            break
        assert time.monotonic() < deadline, "item queued through B never shown by A"
        time.sleep(0.05)
    assert [i["depId"] for i in body["items"]] == [fleet.deps["c"]]
    assert body["pinnedDepIds"] == [fleet.deps["c"]]


@pytest.mark.postgres
def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    """`--workers 2`: two replicas on one socket; memos follow changes made by the other."""
    import psutil

    with (
        postgres_database() as url,
        run_server(url, cwd=tmp_path, extra_env={"DEPMAN_WORKERS": "2"}) as server,
    ):
        children = psutil.Process(server.process.pid).children()
        assert len(children) == 2
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("worker"), dynamic=[fleet.deps["b"]])
        for _ in range(4):  # both processes come to remember this instance
            assert agent.heartbeat() == (200, {"ok": True, "pinnedDepIds": [], "staticDepIds": []})
            assert agent.poll() == (200, {"items": [], "pinnedDepIds": []})
        status, job = fleet.submit(["b", "c"])
        assert status == 200 and job["instanceId"] == agent.instance_id
        # Whichever worker answers, it has heard of the job (its own commit or NOTIFY).
        pins = sorted([fleet.deps["b"], fleet.deps["c"]])
        deadline = time.monotonic() + 10
        for _ in range(6):
            while agent.heartbeat()[1]["pinnedDepIds"] != pins:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            status, body = agent.poll()
            ops = {i["depId"]: i["op"] for i in body["items"]}
            assert status == 200 and ops == {fleet.deps["c"]: "download", fleet.deps["b"]: "touch"}
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        assert not any(child.is_running() and child.status() != "zombie" for child in children)
