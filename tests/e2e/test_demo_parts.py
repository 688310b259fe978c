"""The demo's pure parts: fleet document, inventory diffs, summary line, rendering."""

from __future__ import annotations

import time
from typing import Any

import yaml
from rich.console import Console

from depman.demo import fleet as demo_fleet
from depman.demo.content import content_sha256
from depman.demo.display import Frame, human_bytes, render
from depman.demo.jobs import JobRecord
from depman.demo.monitor import FleetMonitor
from depman.demo.summary import build_summary, render_summary


def test_fleet_document_names_real_digests_and_forces_eviction() -> None:
    files = demo_fleet.build_files("http://127.0.0.1:9", scale=0.02)
    fleet = demo_fleet.fleet_document(files)
    assert set(fleet) == {"version", "deps", "profiles", "serverTypes", "instances"}
    for built in files:
        dep = fleet["deps"][built.spec.dep_id]
        assert dep["sha256"] == content_sha256(built.spec.seed, built.size)
        assert dep["expectedSizeBytes"] == built.size
    assert fleet["deps"]["lora-anime"]["auth"] == "hf_token"
    assert "/redirect/" in fleet["deps"]["sdxl-vae"]["url"]
    profile = fleet["profiles"][demo_fleet.PROFILE_ID]
    assert profile["prefetchOnBoot"] is True
    assert profile["staticDepIds"] == ["sdxl-base", "sdxl-vae"]
    assert yaml.safe_load(demo_fleet.fleet_yaml(fleet)) == fleet
    # At full scale: more dynamic bytes than both caps hold, yet every job fits one cap.
    sizes = {f.dep_id: f.size_bytes() for f in demo_fleet.FILES}
    dynamic = {f.dep_id for f in demo_fleet.FILES if f.kind == "dynamic"}
    assert sum(sizes[d] for d in dynamic) > 2 * demo_fleet.MAX_DYNAMIC_BYTES
    for job in demo_fleet.JOBS:
        assert sum(sizes[d] for d in job.dep_ids if d in dynamic) <= demo_fleet.MAX_DYNAMIC_BYTES
        assert set(job.dep_ids) <= set(sizes)
    assert {d for job in demo_fleet.JOBS for d in job.dep_ids} == set(sizes)


class FakeApi:
    def __init__(self, answers: list[list[dict[str, Any]]]) -> None:
        self.answers = answers

    def list_instances(self) -> list[dict[str, Any]]:
        return self.answers.pop(0)


def doc(
    static: list[str], dynamic: list[str], downloading: list[str] | None = None
) -> dict[str, Any]:
    return {
        "instanceId": "demo-a",
        "dependencyManager": {
            "lastHeartbeatAt": "2026-01-01T00:00:00Z",
            "installedDepIdsStatic": static,
            "installedDepIdsDynamic": dynamic,
            "downloadingDepIds": downloading or [],
            "dynamicBytesUsed": 10,
        },
    }


def test_monitor_counts_installs_and_evictions_from_heartbeat_inventories() -> None:
    api = FakeApi(
        [
            [doc(["base"], [], ["lora"])],
            [doc(["base"], ["lora"])],
            [doc(["base"], ["lora", "vae"])],
            [doc(["base"], ["vae"], ["big"])],
        ]
    )
    monitor = FleetMonitor(api, ["demo-a"])  # type: ignore[arg-type]
    for _ in range(4):
        monitor.poll_once()
    kinds = [(e.kind, e.dep_id) for e in monitor.take_new_events()]
    assert kinds == [
        ("live", ""),
        ("downloading", "lora"),
        ("installed", "base"),
        ("installed", "lora"),
        ("installed", "vae"),
        ("downloading", "big"),
        ("evicted", "lora"),
    ]
    assert monitor.totals.evictions == 1
    assert monitor.totals.installs == 3
    assert monitor.take_new_events() == []


def test_summary_line_and_rendering() -> None:
    now = time.monotonic()
    records = [
        JobRecord("a", ("x", "y"), "demo-a", "completed", "demo-a", submitted_at=now - 2,
                  finished_at=now),
        JobRecord("b", ("x",), "demo-b", "failed", "demo-b", error="sha256 mismatch",
                  submitted_at=now - 1, finished_at=now),
    ]
    summary = build_summary(records, {"a": 1}, bytes_downloaded=2048, evictions=2, installs=3,
                            wall_seconds=12.34)
    assert not summary.ok
    assert summary.result_line() == (
        "demo result: FAILED jobs_completed=1/2 bytes_downloaded=2048 cache_hits=1/3 "
        "evictions=2 seconds=12.3"
    )
    console = Console(record=True, width=120)
    console.print(render_summary(summary))
    frame = Frame("t", "running", now, {}, records, [], 1024, {})
    console.print(render(frame))
    text = console.export_text()
    assert "sha256 mismatch" in text and "waiting for the first heartbeats" in text
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "-"
