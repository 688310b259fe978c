"""`depman demo` as a user runs it: a subprocess that must exit 0 with its summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

RESULT_RE = re.compile(
    r"demo result: ok jobs_completed=(\d+)/(\d+) bytes_downloaded=(\d+) "
    r"cache_hits=(\d+)/(\d+) evictions=(\d+) seconds=([\d.]+)"
)


def test_demo_runs_every_job_to_completion(tmp_path: Path) -> None:
    # The default run, as a user types it; its temp folder lands in our TMPDIR.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPMAN_", "DM_"))}
    env.update({"COLUMNS": "160", "TMPDIR": str(tmpdir)})
    proc = subprocess.run(
        [sys.executable, "-m", "depman", "demo"],
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
    assert int(evictions) > 0, output  # the dynamic deps outgrow both caps together
    assert float(seconds) < 90, output  # 10-20 s here; slack for a loaded CI machine
    for heading in ("instances", "downloads", "jobs", "summary", "cache hits", "time per job"):
        assert heading in output
    _assert_the_log_reads_in_order(proc.stdout)
    # Every process stopped and the temp folder (database, models, logs) is gone.
    assert not list(tmpdir.glob("depman-demo-*")), list(tmpdir.iterdir())
    assert not _processes_mentioning(str(tmpdir))


LOG_LINE_RE = re.compile(r"^\[\s*([\d.]+)s\] (.*)$", re.M)


def _assert_the_log_reads_in_order(stdout: str) -> None:
    """Without a terminal the demo logs one line per event: in time order, and a job
    runs only after the log showed each of its models installed on its instance."""
    lines = LOG_LINE_RE.findall(stdout)
    stamps = [float(stamp) for stamp, _ in lines]
    assert stamps == sorted(stamps), stdout
    needs: dict[str, list[str]] = {}
    installed: set[tuple[str, str]] = set()
    for _, text in lines:
        if m := re.match(r"submitted (\S+): (.*) -> ", text):
            needs[m[1]] = m[2].split(", ")
        elif m := re.match(r"(\S+): installed (\S+)$", text):
            installed.add((m[1], m[2]))
        elif m := re.match(r"job (\S+) running on (\S+)$", text):
            missing = [dep for dep in needs[m[1]] if (m[2], dep) not in installed]
            assert not missing, (text, missing, stdout)


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose environment names `text` (the demo's children all do, via TMPDIR)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(text in value for value in proc.environ().values()):
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.Error, OSError):
            continue
    return found
