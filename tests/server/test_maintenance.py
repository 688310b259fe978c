"""The sweep: stale running items go back to queued, then fail; jobs time out."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from depman.core.maintenance import SWEEP_LOCK_KEY
from tests.server.fleet import make_fleet
from tests.support.server import RunningServer, postgres_database, run_replica, run_server
from tests.support.wait import wait_until

SWEEP_ENV = {
    "DEPMAN_RUNNING_TIMEOUT_SECONDS": "1",
    "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.2",
    "DEPMAN_MAX_ITEM_ATTEMPTS": "2",
    "DEPMAN_JOB_MAX_PLACEMENTS": "1",
    "DEPMAN_JOB_PENDING_TIMEOUT_SECONDS": "0.5",
    "DEPMAN_SUBMIT_TOKEN": "submit-only-token",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server with short timeouts and a fast sweep, on both backends."""
    tmp = tmp_path_factory.mktemp("sweep")
    if request.param == "sqlite":
        with run_server(f"sqlite:///{tmp / 'd.db'}", extra_env=SWEEP_ENV, cwd=tmp) as server:
            yield server
    else:
        with postgres_database() as url, run_server(url, extra_env=SWEEP_ENV, cwd=tmp) as server:
            yield server


def test_stale_running_is_requeued_then_failed(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("stale"))
    job = fleet.submit(["b", "c"])[1]
    dep_b, dep_c = fleet.deps["b"], fleet.deps["c"]
    items = {i["depId"]: i for i in agent.poll()[1]["items"]}
    agent.status(items[dep_b], "running")
    agent.status(items[dep_c], "running")
    # Heartbeats that list c as downloading keep it running; b is requeued.
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline:
        agent.heartbeat(downloadingDepIds=[dep_c])
        time.sleep(0.2)
    state = agent.items()
    assert state[dep_c]["state"] == "running"
    assert state[dep_b]["state"] == "queued" and state[dep_b]["attempts"] == 1
    # Running again without progress: attempts reach the maximum, the item and the job fail.
    agent.status(items[dep_b], "running")
    failed = wait_until(lambda: agent.items()[dep_b]["state"] == "failed" and agent.items()[dep_b],
                        15, "the item to fail")
    assert failed["attempts"] == 2 and "downloading" in failed["error"]
    _, after = server.admin("GET", f"/jobs/{job['jobId']}")
    assert after["state"] == "failed" and dep_b in after["error"]


def test_pending_job_times_out(server: RunningServer) -> None:
    fleet = make_fleet(server)
    job = fleet.submit(["b"])[1]
    assert job["state"] == "pending"
    done = wait_until(
        lambda: server.admin("GET", f"/jobs/{job['jobId']}")[1]["state"] == "failed",
        15, "the job to fail",
    )
    assert done


def test_submit_token_reaches_jobs_only(server: RunningServer) -> None:
    fleet = make_fleet(server)
    submit = {"Authorization": "Bearer submit-only-token"}
    body = {"serverType": fleet.server_type, "depIds": [fleet.deps["b"]]}
    status, job = server.request("POST", "/api/jobs", body, submit)
    assert status == 200, job
    assert server.request("GET", f"/api/jobs/{job['jobId']}", headers=submit)[0] == 200
    assert server.request("GET", "/api/admin/deps", headers=submit)[0] == 401


@pytest.mark.postgres
def test_one_process_sweeps_at_a_time(tmp_path: Path) -> None:
    """While another holder has the sweep's lock, no replica sweeps; after, one does."""
    with (
        postgres_database() as url,
        run_server(url, extra_env=SWEEP_ENV, cwd=tmp_path) as first,
        run_replica(first, cwd=tmp_path),
    ):
        fleet = make_fleet(first)
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK_KEY,))
            job = fleet.submit(["b"])[1]
            time.sleep(1.5)  # three times the pending timeout, many sweep intervals
            status, body = first.admin("GET", f"/jobs/{job['jobId']}")
            assert (status, body["state"]) == (200, "pending")
            holder.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK_KEY,))
        failed = wait_until(
            lambda: (b := first.admin("GET", f"/jobs/{job['jobId']}")[1])["state"] == "failed"
            and b,
            15, "the job to fail",
        )
        assert "no instance became free" in failed["error"]


def _sweeps(server: RunningServer) -> float:
    """Sweeps run by this server's processes (skipped turns are not counted)."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    found = re.search(r'^depman_periodic_task_seconds_count\{task="sweep"\} ([\d.e+]+)$', text,
                      re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.postgres
def test_three_processes_sweep_once_per_interval_together(tmp_path: Path) -> None:
    """Each process keeps its own timer; together they still sweep once an interval."""
    interval, window = 0.5, 6.0
    env = {"DEPMAN_MAINTENANCE_INTERVAL_SECONDS": str(interval), "DEPMAN_WORKERS": "3"}
    with postgres_database() as url, run_server(url, extra_env=env, cwd=tmp_path) as server:
        wait_until(lambda: _sweeps(server) >= 3, 20, "the first sweeps")
        before = _sweeps(server)
        time.sleep(window)
        swept = _sweeps(server) - before
    # Each process alone would sweep 12 times in the window: 36 together.
    assert 0 < swept <= window / (interval * 0.8) + 2, swept
