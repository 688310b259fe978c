"""Rich tables render the admin API's JSON, and show `-` for what the server leaves out."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from depman.client import tables

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
GIB = 1024**3


def render(table: Table) -> str:
    console = Console(width=220, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_instances_table_shows_liveness_disk_and_inventory() -> None:
    instance = {
        "instanceId": "vast-1",
        "serverType": "sdxl",
        "live": True,
        "dependencyManager": {
            "lastHeartbeatAt": "2025-06-01T11:59:48Z",
            "installedDepIdsStatic": ["a", "b"],
            "installedDepIdsDynamic": ["c"],
            "downloadingDepIds": ["d"],
            "diskStats": {"totalBytes": 100 * GIB, "usedBytes": 80 * GIB, "freeBytes": 20 * GIB},
            "dynamicBytesUsed": 3 * GIB,
            "queueDepth": 4,
        },
    }
    row = next(
        line
        for line in render(tables.instances_table([instance], now=NOW)).splitlines()
        if "vast-1" in line
    )
    for cell in (
        "sdxl",
        "live",
        "12s",
        "████████░░",
        "80%",
        "20.0 GiB free",
        "3.0 GiB",
        "4",
        "2/1",
        "d",
    ):
        assert cell in row, cell


def test_instances_table_with_stale_and_never_seen_instances() -> None:
    text = render(
        tables.instances_table(
            [
                {
                    "instanceId": "old",
                    "serverType": "t",
                    "stale": True,
                    "heartbeatAgeSeconds": 600,
                    "dependencyManager": {},
                },
                {
                    "instanceId": "new",
                    "serverType": "t",
                    "live": False,
                    "heartbeatAgeSeconds": None,
                },
            ],
            now=NOW,
        )
    )
    old = next(line for line in text.splitlines() if "old" in line)
    new = next(line for line in text.splitlines() if "new" in line)
    assert "stale" in old and "10m00s" in old
    assert "never seen" in new and "0/0" in new


def test_disk_bar_derives_missing_numbers() -> None:
    assert tables.disk_bar(None, None, None).plain == "-"
    assert tables.disk_bar(50, 50, None).plain.startswith("█████░░░░░  50%")
    assert tables.disk_bar(None, 25, 100).plain == "████████░░  75% 25 B free"


def test_deps_jobs_and_queue_tables() -> None:
    deps = render(
        tables.deps_table(
            [
                {
                    "depId": "sdxl",
                    "kind": "static",
                    "auth": "none",
                    "sha256": "ab" * 32,
                    "expectedSizeBytes": 6 * GIB,
                    "destRelativePath": "models/x.safetensors",
                    "url": "https://hf.co/x",
                }
            ]
        )
    )
    assert "sdxl" in deps and "6.0 GiB" in deps and "abababababab…" in deps
    assert tables.short_url("https://hf.co/org/repo/resolve/main/x.bin") == "hf.co/…/x.bin"
    assert tables.short_url("https://civitai.com/models") == "https://civitai.com/models"
    jobs = render(
        tables.jobs_table(
            [
                {
                    "jobId": "j1",
                    "state": "waiting_deps",
                    "instanceId": "vast-1",
                    "missingDepIds": ["lora"],
                    "createdAt": "2025-06-01T11:58:00+00:00",
                }
            ],
            now=NOW,
        )
    )
    row = next(line for line in jobs.splitlines() if "j1" in line)
    assert "waiting_deps" in row and "vast-1" in row and "lora" in row and "2m00s" in row
    queue = render(
        tables.queue_table(
            "vast-1",
            [
                {
                    "itemId": "lora.2",
                    "depId": "lora",
                    "op": "download",
                    "state": "failed",
                    "attempts": 3,
                    "error": "Missing CIVITAI_TOKEN " + "x" * 100,
                },
                {
                    "itemId": "vae.1",
                    "depId": "vae",
                    "op": "download",
                    "state": "queued",
                    "waitingForUpstream": "huggingface.co",
                },
            ],
        )
    )
    assert "Queue of vast-1 (2)" in queue
    waiting = next(line for line in queue.splitlines() if "vae.1" in line)
    assert "queued (waiting for huggingface.co)" in waiting
    row = next(line for line in queue.splitlines() if "lora.2" in line)
    assert "download" in row and "failed" in row and "3" in row and "Missing CIVITAI_TOKEN" in row
    assert "x" * 100 not in queue


def test_job_table_shows_history_and_error() -> None:
    text = render(
        tables.job_table(
            {
                "jobId": "j1",
                "state": "failed",
                "serverType": "sdxl",
                "depIds": ["a", "b"],
                "error": "dep a failed: sha256 mismatch",
                "history": [
                    {"at": "t0", "event": "placed", "instanceId": "vast-1"},
                    {"at": "t1", "event": "failed", "reason": "sha256 mismatch"},
                ],
            },
            now=NOW,
        )
    )
    assert "Job j1" in text and "a, b" in text and "sha256 mismatch" in text
    assert "t0 placed vast-1" in text and "t1 failed (sha256 mismatch)" in text
