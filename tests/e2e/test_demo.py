"""`depman demo` as a user runs it: a subprocess that must exit 0 with its summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RESULT_RE = re.compile(
    r"demo result: ok jobs_completed=(\d+)/(\d+) bytes_downloaded=(\d+) "
    r"cache_hits=(\d+)/(\d+) evictions=(\d+) seconds=([\d.]+)"
)


def test_demo_runs_every_job_to_completion(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPMAN_", "DM_"))}
    env["COLUMNS"] = "160"
    proc = subprocess.run(
        [sys.executable, "-m", "depman", "demo", "--workdir", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    match = RESULT_RE.search(output)
    assert match, output
    done, total, served, hits, _, evictions, seconds = match.groups()
    assert done == total == "6"
    assert int(served) > 300 * 1024 * 1024  # two prefetches of the static deps at least
    assert int(hits) > 0, output  # later jobs land where their deps already are
    assert int(evictions) > 0, output  # the small dynamic cap forces eviction
    assert float(seconds) < 90, output  # about 35 s here; slack for a loaded CI machine
    assert "summary" in output
    # The work folder keeps the fleet file and every log; no process is left behind.
    assert (workdir / "fleet.yaml").is_file()
    assert {p.name for p in (workdir / "logs").iterdir()} >= {
        "server.log",
        "origin.log",
        "agent-demo-a.log",
        "agent-demo-b.log",
    }
