"""What holds a server process is measured and named: a slow sweep, GC pauses, loop lag."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from tests.support.server import RunningServer, run_server
from tests.support.wait import wait_until


def metric(server: RunningServer, name: str) -> float:
    """The sum of a metric's samples (every label set) in this process's /metrics."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([\d.e+-]+)$", re.M)
    return sum(float(value) for value in pattern.findall(text))


def test_a_sweep_held_by_a_locked_database_is_logged_with_its_steps(tmp_path: Path) -> None:
    db_file = tmp_path / "pauses.db"
    env = {
        "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.2",
        # Well above an ordinary sweep on a loaded machine (one took 338 ms in CI).
        "DEPMAN_PAUSE_WARNING_SECONDS": "1.0",
    }
    with run_server(f"sqlite:///{db_file}", cwd=tmp_path, extra_env=env) as server:
        wait_until(lambda: metric(server, "depman_periodic_task_seconds_count") >= 2, 20,
                   "two sweeps")
        assert "periodic task sweep took" not in server.logs()
        # Another writer holds the database: the sweep's first write waits for it.
        blocker = sqlite3.connect(db_file, timeout=5)
        blocker.execute("BEGIN IMMEDIATE")
        time.sleep(2.0)
        blocker.rollback()
        blocker.close()
        wait_until(lambda: "periodic task sweep took" in server.logs(), 20, "the pause warning")
        line = next(li for li in server.logs().splitlines() if "periodic task sweep took" in li)
        # The warning says which step waited, so an operator knows where to look.
        steps = r"\(lost \d+ ms, failed_items \d+ ms, .*placement \d+ ms"
        assert re.search(rf"took \d+ ms {steps}", line)
        # Once a minute at most, however many sweeps are slow.
        blocker = sqlite3.connect(db_file, timeout=5)
        blocker.execute("BEGIN IMMEDIATE")
        time.sleep(2.0)
        blocker.rollback()
        blocker.close()
        time.sleep(0.5)
        assert server.logs().count("periodic task sweep took") == 1
        # Every run is in the histogram, the slow ones in its upper buckets.
        assert metric(server, "depman_periodic_task_seconds_sum") >= 0.3


def test_loop_lag_and_gc_pauses_are_in_the_metrics(tmp_path: Path) -> None:
    with run_server(f"sqlite:///{tmp_path / 'gc.db'}", cwd=tmp_path) as server:
        wait_until(lambda: metric(server, "depman_event_loop_lag_seconds_count") >= 5, 20,
                   "five loop-lag samples")
        # Requests allocate: the young generation is collected within a few hundred.
        for _ in range(300):
            server.request("GET", "/metrics")
        assert metric(server, "depman_gc_pause_seconds_count") >= 1
