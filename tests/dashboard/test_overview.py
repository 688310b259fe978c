"""The dashboard's read models over a seeded fleet, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from depman.core import overview
from depman.errors import NotFound
from tests.dashboard.fleet_data import GiB

LIVE_TTL = 90.0


def test_fleet_orders_live_first_and_reads_liveness(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        fleet = overview.fleet_overview(session=session, now=now, live_ttl=LIVE_TTL)
    statuses = [(row.instance_id, row.status) for row in fleet.instances]
    assert statuses == [
        ("vast-1001", "live"),
        ("vast-1002", "live"),
        ("vast-1003", "live"),
        ("vast-flux-7", "stale"),
        ("vast-1009", "never"),
    ]
    assert (fleet.live_count, fleet.stale_count) == (3, 2)


def test_liveness_follows_the_ttl(any_seeded: Engine, now: datetime) -> None:
    later = now + timedelta(seconds=70)
    with Session(any_seeded) as session:
        fleet = overview.fleet_overview(session=session, now=later, live_ttl=LIVE_TTL)
    live = {row.instance_id for row in fleet.instances if row.live}
    # Heartbeats 4 s, 12 s and 25 s before `now`: 74 s and 82 s old are within 90 s, 95 s is not.
    assert live == {"vast-1001", "vast-1002"}


def test_fleet_row_carries_cache_cap_queue_and_downloads(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        fleet = overview.fleet_overview(session=session, now=now, live_ttl=LIVE_TTL)
    row = fleet.instances[0]
    assert row.dynamic_cap == 20 * GiB
    assert row.dynamic_fraction == pytest.approx(9 / 20)
    assert row.disk_fraction == pytest.approx(120 / 200)
    assert (row.static_count, row.dynamic_count) == (3, 1)
    assert (row.items_queued, row.items_running, row.items_failed) == (1, 1, 0)
    assert row.active_jobs == 1
    assert row.heartbeat_age == pytest.approx(4, abs=0.01)
    [download] = row.downloads
    assert download.dep_id == "juggernaut-xl-v9"
    assert download.fraction == pytest.approx(3 * GiB / 7_105_000_000)
    assert download.eta_seconds is not None and download.eta_seconds > 0
    flux = next(r for r in fleet.instances if r.instance_id == "vast-flux-7")
    assert flux.dynamic_cap is None and flux.dynamic_fraction is None
    assert fleet.download_count == 1 and fleet.failed_count == 1
    assert fleet.jobs_by_state["waiting_deps"] == 1


def test_instance_detail_pins_queue_and_inventory(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        detail = overview.instance_detail("vast-1001", session=session, now=now, live_ttl=LIVE_TTL)
    assert detail.profile_id == "sdxl-v1"
    assert [e.dep_id for e in detail.static] == ["clip-vit-l", "sdxl-base-1.0", "sdxl-vae"]
    assert [e.dep_id for e in detail.dynamic] == ["lora-pixel-art"]
    assert {e.dep_id for e in detail.static + detail.dynamic if e.pinned} == {
        "sdxl-base-1.0",
        "lora-pixel-art",
    }
    pins = {p.dep_id: p for p in detail.pinned}
    assert set(pins) == {
        "sdxl-base-1.0",
        "juggernaut-xl-v9",
        "controlnet-canny-sdxl",
        "lora-pixel-art",
    }
    assert pins["juggernaut-xl-v9"].job_ids == ["job-a1"]
    assert not pins["juggernaut-xl-v9"].installed and pins["sdxl-base-1.0"].installed
    # Running first, and the running item carries the live progress.
    assert [q.state for q in detail.queue] == ["running", "queued", "succeeded"]
    assert detail.queue[0].item_id == "juggernaut-xl-v9.1"
    assert detail.queue[0].download is not None
    assert [j.job_id for j in detail.jobs] == ["job-a1"]


def test_instance_detail_shows_queue_errors(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        detail = overview.instance_detail("vast-1002", session=session, now=now, live_ttl=LIVE_TTL)
    [failed] = [q for q in detail.queue if q.state == "failed"]
    assert failed.item_id == "controlnet-canny-sdxl.2"
    assert failed.attempts == 3
    assert failed.error is not None and "Missing HF_TOKEN" in failed.error


def test_unknown_instance_is_not_found(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session, pytest.raises(NotFound):
        overview.instance_detail("nope", session=session, now=now, live_ttl=LIVE_TTL)


def test_jobs_waiting_on_lists_missing_deps_with_their_items(
    any_seeded: Engine, now: datetime
) -> None:
    with Session(any_seeded) as session:
        jobs = overview.jobs_overview(session=session, now=now)
    by_id = {j.job_id: j for j in jobs.jobs}
    assert jobs.jobs[0].job_id == "job-a5"  # newest first
    waiting = by_id["job-a1"].waiting_on
    assert [(w.dep_id, w.item_state) for w in waiting] == [
        ("juggernaut-xl-v9", "running"),
        ("controlnet-canny-sdxl", "queued"),
    ]
    assert waiting[0].fraction is not None
    assert by_id["job-a2"].waiting_on == []
    assert by_id["job-a3"].run_time == pytest.approx(60)
    assert by_id["job-a3"].deps_wait == pytest.approx(30)
    assert jobs.counts == {
        "waiting_deps": 1,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "pending": 1,
    }
    assert jobs.total == 5


def test_jobs_filter_by_state(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        jobs = overview.jobs_overview(session=session, now=now, state="failed")
    assert [j.job_id for j in jobs.jobs] == ["job-a4"]
    assert jobs.total == 5


def test_catalog_counts_holders_and_items(any_seeded: Engine, now: datetime) -> None:
    with Session(any_seeded) as session:
        rows = overview.catalog_overview(session=session, now=now, live_ttl=LIVE_TTL)
    by_id = {r.dep_id: r for r in rows}
    # Three live instances and the stale one hold the static deps.
    assert (by_id["sdxl-base-1.0"].holders_live, by_id["sdxl-base-1.0"].holders_total) == (3, 4)
    assert by_id["sdxl-base-1.0"].profiles == ["sdxl-v1"]
    assert by_id["sdxl-base-1.0"].url_host == "huggingface.co"
    canny = by_id["controlnet-canny-sdxl"]
    assert (canny.items_queued, canny.items_failed, canny.holders_total) == (1, 1, 0)
    assert [r.kind for r in rows][:3] == ["static"] * 3


def test_malformed_active_downloads_are_skipped() -> None:
    parsed = overview.parse_downloads(
        [
            {"depId": "a", "bytesDone": 5, "bytesTotal": 10, "bytesPerSecond": 1},
            {"bytesDone": 1},
            "junk",  # type: ignore[list-item]
            {"depId": "b", "bytesDone": "x", "bytesTotal": None},
        ]
    )
    assert [(d.dep_id, d.bytes_done, d.fraction) for d in parsed] == [
        ("a", 5, 0.5),
        ("b", 0, None),
    ]


def test_empty_database(any_engine: Engine, now: datetime) -> None:
    with Session(any_engine) as session:
        fleet = overview.fleet_overview(session=session, now=now, live_ttl=LIVE_TTL)
        assert fleet.instances == [] and fleet.live_count == 0
        assert overview.catalog_overview(session=session, now=now, live_ttl=LIVE_TTL) == []
        assert overview.jobs_overview(session=session, now=now).jobs == []
