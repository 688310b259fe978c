"""`depman queue`, `depman instance`, `depman jobs cancel`, `depman audit` against a live server."""

from __future__ import annotations

import pytest

from tests.cli.helpers import assert_clean_failure, row_of, run_cli
from tests.server.fleet import make_fleet
from tests.server.test_field_agents import field_agent, items_of, job_of
from tests.support.server import RunningServer

# `depman audit` without a filter lists every action on the server.
pytestmark = pytest.mark.own_server


def test_operator_actions_from_the_cli(server: RunningServer) -> None:
    fleet = make_fleet(server, static=["a"])
    client = field_agent(server, fleet, "cli", "0.9.18")
    iid = client.instance_id
    _, job = fleet.submit(["b"])
    (item,) = client.poll()
    client.status(item, "running")
    client.status(item, "failed", "HTTP 403")

    retried = run_cli(server, "queue", "retry", iid, item["depId"], "--after-ms", "250")
    assert retried.exit_code == 0, retried.output
    (again,) = client.poll()
    assert again["forceRetry"] is True and again["forceRetryAfterMs"] == 250

    cancelled = run_cli(server, "queue", "cancel", iid, item["depId"], "--reason", "bad file")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    assert items_of(server, iid)[item["depId"]]["cancelReason"] == "bad file"

    refused = run_cli(server, "instance", "delete-dep", iid, fleet.deps["a"])
    assert_clean_failure(refused, "static", "force")
    forced = run_cli(server, "instance", "delete-dep", iid, fleet.deps["a"], "--force")
    assert forced.exit_code == 0, forced.output
    assert items_of(server, iid)[fleet.deps["a"]]["op"] == "delete"

    assert run_cli(server, "instance", "drain", iid).exit_code == 0
    assert "drained" in row_of(run_cli(server, "get", "instances").stdout, iid)
    _, pending = fleet.submit(["c"])
    assert pending["state"] == "pending"
    gone = run_cli(server, "jobs", "cancel", pending["jobId"], "--reason", "no longer needed")
    assert gone.exit_code == 0, gone.output
    assert job_of(server, pending["jobId"])["state"] == "failed"
    assert run_cli(server, "instance", "undrain", iid).exit_code == 0

    log = run_cli(server, "audit", "--instance", iid)
    assert log.exit_code == 0, log.output
    for action in ("retry_item", "cancel_item", "delete_dep", "drain", "undrain"):
        assert "@" in row_of(log.stdout, action)  # who: user@host of the CLI
    whole = run_cli(server, "audit")
    assert "cancel_job" in whole.stdout and job["jobId"] not in whole.stdout
    missing = run_cli(server, "queue", "cancel", "no-such-instance", "x")
    assert_clean_failure(missing, "no-such-instance")
