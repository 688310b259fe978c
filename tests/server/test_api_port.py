"""The job and admin API on a port and a process of its own, beside the agents' port."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.server.fleet import make_fleet
from tests.support.server import postgres_database, run_server


@pytest.mark.postgres
def test_jobs_submitted_on_the_api_port_reach_agents_on_the_main_port(tmp_path: Path) -> None:
    env = {"DEPMAN_API_PORT": "0", "DEPMAN_WORKERS": "2"}
    with postgres_database() as url, run_server(url, extra_env=env, cwd=tmp_path) as server:
        api = server.on_api_port()
        assert api.root_url != server.root_url
        # The count logged is the one asked for; the API's process is named apart.
        assert "starting 2 server workers and the job API's process" in server.logs()
        fleet = make_fleet(api)  # the catalog, written through the API process
        fleet.server = server  # agents register and report on the main port
        agent = fleet.register(fleet.add_instance("gpu"), dynamic=[fleet.deps["c"]])
        fleet.server = api
        status, job = fleet.submit(["b", "c"])
        assert status == 200 and job["instanceId"] == agent.instance_id, job
        assert job["state"] == "waiting_deps"
        # A job runner waits on the API process; the agent's report on the main port
        # (another process) wakes it.
        waited: dict[str, Any] = {}

        def wait_for_ready() -> None:
            waited["answer"] = api.admin(
                "GET", f"/jobs/{job['jobId']}?waitSeconds=20&seenState=waiting_deps"
            )

        waiter = threading.Thread(target=wait_for_ready)
        waiter.start()
        items = agent.items()
        for dep_id in (fleet.deps["b"], fleet.deps["c"]):
            assert agent.status(items[dep_id], "running")[0] == 200
            assert agent.status(items[dep_id], "succeeded")[0] == 200
        agent.installed_dynamic = [fleet.deps["b"], fleet.deps["c"]]
        assert agent.heartbeat()[0] == 200
        waiter.join(25)
        status, body = waited["answer"]
        assert (status, body["state"]) == (200, "ready")
        # Operators' reads and the dashboard answer there too.
        status, body = api.admin("GET", f"/admin/instances/{agent.instance_id}")
        assert status == 200 and body["instanceId"] == agent.instance_id
        status, page = api.request("GET", "/login")
        assert status == 200 and "depman" in page


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_database_that_cannot_be_opened_is_one_line_and_exit_2(
    tmp_path: Path, backend: str
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'no-such-folder' / 'depman.db'}"
        reason = "unable to open database file"
    else:
        with postgres_database() as existing:
            pass  # created and dropped again: a database that does not exist
        url = existing.replace("postgresql+psycopg://", "postgresql://", 1)
        reason = "does not exist"
    result = subprocess.run(
        [sys.executable, "-m", "depman", "server", "--port", "0", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "DEPMAN_ADMIN_TOKEN": "a" * 32,
            "DEPENDENCY_MANAGER_SHARED_SECRET": "s" * 32,
        },
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("depman server: cannot use the database ")
    assert reason in lines[0] and "DEPMAN_DATABASE_URL" in lines[0]


def test_an_api_port_on_sqlite_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "depman", "server", "--port", "0", "--api-port", "0",
         "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "DEPMAN_ADMIN_TOKEN": "a" * 32},
    )
    assert result.returncode == 2
    assert "api_port needs a PostgreSQL database_url" in result.stderr
