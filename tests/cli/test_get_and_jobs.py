"""`depman get` and `depman jobs` on a fresh server with agents that register and heartbeat."""

from __future__ import annotations

import re

import pytest

from tests.cli.helpers import (
    EXAMPLE,
    assert_clean_failure,
    heartbeat,
    register,
    row_of,
    run_cli,
)
from tests.support.server import RunningServer

SDXL_TYPE = "sdxl-standard-v8"
FIRST, SECOND, FLUX = "14620331", "14620388", "14701205"

# The example fleet's fixed ids, and tables that list the whole fleet.
pytestmark = pytest.mark.own_server


def test_fleet_tables_and_jobs(server: RunningServer) -> None:
    assert run_cli(server, "apply", "-f", str(EXAMPLE)).exit_code == 0
    token = register(server, FIRST, SDXL_TYPE)
    heartbeat(server, token, FIRST, static=["sdxl-base-1.0"])

    deps = run_cli(server, "get", "deps")
    assert deps.exit_code == 0, deps.output
    row = row_of(deps.stdout, "juggernaut-xl-v9")
    assert (
        "dynamic" in row and "civitai_token" in row and "6.6 GiB" in row and "c9e3e68f89b8…" in row
    )

    instances = run_cli(server, "get", "instances")
    assert instances.exit_code == 0, instances.output
    live = row_of(instances.stdout, FIRST)
    for cell in (SDXL_TYPE, "live", "24%", "380.0 GiB free", "2.0 GiB", "1/0"):
        assert cell in live, cell
    never = row_of(instances.stdout, FLUX)
    assert "flux-dev-v2" in never and "never seen" in never
    one = run_cli(server, "get", "instances", FIRST)
    assert one.exit_code == 0 and SECOND not in one.stdout

    # Registering queued the profile's static deps (prefetchOnBoot).
    queue = run_cli(server, "get", "queue", FIRST)
    assert queue.exit_code == 0, queue.output
    row = row_of(queue.stdout, "sdxl-vae-fp16-fix ")
    assert "download" in row and "queued" in row

    submitted = run_cli(
        server,
        "jobs", "submit", "--server-type", SDXL_TYPE, "--job-id", "job-1",
        "sdxl-base-1.0", "lora-pixel-art-xl",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    assert f"Job job-1: waiting_deps on {FIRST}; downloading lora-pixel-art-xl" in submitted.stdout

    jobs = run_cli(server, "get", "jobs")
    row = row_of(jobs.stdout, "job-1")
    assert "waiting_deps" in row and FIRST in row and "lora-pixel-art-xl" in row
    assert "job-1" in run_cli(server, "get", "jobs", FIRST).stdout
    assert "job-1" not in run_cli(server, "get", "jobs", SECOND).stdout
    shown = run_cli(server, "jobs", "get", "job-1")
    assert shown.exit_code == 0, shown.output
    assert "waiting_deps" in shown.stdout and "sdxl-base-1.0, lora-pixel-art-xl" in shown.stdout
    assert "lora-pixel-art-xl" in run_cli(server, "get", "queue", FIRST).stdout

    # The first instance's only slot is taken; the second holds the dep: ready at once.
    second = register(server, SECOND, SDXL_TYPE)
    heartbeat(server, second, SECOND, static=["sdxl-base-1.0"])
    waited = run_cli(
        server, "jobs", "submit", "--server-type", SDXL_TYPE, "--wait", "sdxl-base-1.0"
    )
    assert waited.exit_code == 0, waited.output
    assert f": ready on {SECOND}" in waited.stdout

    # The lora fails on the first instance and no other one is free: job-1 fails, and
    # `--wait` on the same (idempotent) submission reports it with exit code 1.
    _, items = server.admin("GET", f"/admin/queues/{FIRST}/items")
    [item] = [i for i in items["items"] if i["depId"] == "lora-pixel-art-xl"]
    status, answer = server.request(
        "POST",
        "/api/dependencies/status",
        {
            "instanceId": FIRST,
            "itemId": item["itemId"],
            "depId": "lora-pixel-art-xl",
            "op": "download",
            "state": "failed",
            "diskStats": {"totalBytes": 1, "freeBytes": 1, "usedBytes": 0},
            "dynamicBytesUsed": 0,
            "error": "sha256 mismatch",
        },
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 200, answer
    failed = run_cli(
        server,
        "jobs", "submit", "--server-type", SDXL_TYPE, "--job-id", "job-1", "--wait",
        "sdxl-base-1.0", "lora-pixel-art-xl",
    )  # fmt: skip
    assert failed.exit_code == 1, failed.output
    assert "Job job-1: failed" in failed.stdout and "sha256 mismatch" in failed.stdout
    assert "failed" in row_of(run_cli(server, "get", "queue", FIRST).stdout, "lora-pixel-art-xl")

    # The runner's part: start it, run the workflow on the instance, complete it.
    match = re.search(r"Job (\S+): ready", waited.stdout)
    assert match is not None
    ready_job = match.group(1)
    started = run_cli(server, "jobs", "start", ready_job)
    assert started.exit_code == 0, started.output
    assert f"Job {ready_job}: running on {SECOND}" in started.stdout
    assert_clean_failure(run_cli(server, "jobs", "start", "job-1"), "job-1")
    completed = run_cli(server, "jobs", "complete", ready_job)
    assert completed.exit_code == 0, completed.output
    assert f"Job {ready_job}: completed on {SECOND}" in completed.stdout
    assert "completed" in row_of(run_cli(server, "get", "jobs").stdout, ready_job)
    assert_clean_failure(
        run_cli(server, "jobs", "complete", ready_job, "--error", "x"), "--failed"
    )
    again = run_cli(
        server, "jobs", "submit", "--server-type", SDXL_TYPE, "--job-id", "job-2", "--wait",
        "sdxl-base-1.0",
    )  # fmt: skip
    assert f"Job job-2: ready on {SECOND}" in again.stdout, again.output
    assert run_cli(server, "jobs", "start", "job-2").exit_code == 0
    failed_run = run_cli(server, "jobs", "complete", "job-2", "--failed", "--error", "CUDA OOM")
    assert failed_run.exit_code == 0, failed_run.output
    assert f"Job job-2: failed on {SECOND}: CUDA OOM" in failed_run.stdout

    # Which instances hold a model, and the file's state there.
    base = run_cli(server, "get", "dep", "sdxl-base-1.0")
    assert base.exit_code == 0, base.output
    assert "Instances with sdxl-base-1.0 (2)" in base.stdout
    for instance in (FIRST, SECOND):
        assert "held (static)" in row_of(base.stdout, instance)
    lora = run_cli(server, "get", "dep", "lora-pixel-art-xl")
    row = row_of(lora.stdout, FIRST)
    assert "failed" in row and "sha256 mismatch" in row
    assert_clean_failure(run_cli(server, "get", "dep", "ghost"), "dep 'ghost' does not exist")


def test_usage_and_not_found_errors(server: RunningServer) -> None:
    no_instance = run_cli(server, "get", "queue")
    assert no_instance.exit_code == 2 and "INSTANCE_ID" in no_instance.output
    assert_clean_failure(
        run_cli(server, "get", "queue", "ghost"), "instance 'ghost' does not exist"
    )
    assert_clean_failure(run_cli(server, "get", "instances", "ghost"), "ghost")
    assert_clean_failure(run_cli(server, "jobs", "get", "no-such-job"), "no-such-job", "404")
    assert_clean_failure(
        run_cli(server, "jobs", "submit", "--server-type", "nope", "sdxl-base-1.0"), "nope"
    )
    empty = run_cli(server, "get", "instances")
    assert empty.exit_code == 0 and "Instances (0)" in empty.stdout
