"""Each benchmark's smoke mode runs, so the scripts cannot rot. No timing is asserted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each runs a benchmark's processes end to end



def run_smoke(module: str, tmp_path: Path, timeout: float = 150.0) -> str:
    """Run `python -m bench.MODULE --smoke --record` into a results file in tmp_path."""
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--smoke", "--record", "--results", str(results)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )
    output = proc.stdout[-3000:] + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, f"bench.{module} failed:\n{output}"
    text = results.read_text()
    assert "## " in text and "Machine: " in text and "nproc" in text
    return text


def test_placement_smoke(tmp_path: Path) -> None:
    text = run_smoke("placement", tmp_path)
    assert "random" in text and "least-loaded" in text and "Belady" in text


@pytest.mark.skipif(
    not all(shutil.which(b) for b in ("nginx", "curl", "aria2c", "sha256sum")),
    reason="needs nginx (apt nginx-light), curl, aria2c (apt aria2) and sha256sum",
)
def test_download_smoke(tmp_path: Path) -> None:
    text = run_smoke("download", tmp_path)
    assert "depman segmented" in text and "aria2c" in text and "curl" in text


def test_fleet_smoke(tmp_path: Path) -> None:
    text = run_smoke("fleet", tmp_path)
    assert "heartbeat" in text and "queue" in text
    assert "answered by the memo / quick / full stage" in text


def test_inventory_check_smoke(tmp_path: Path) -> None:
    text = run_smoke("inventory_check", tmp_path)
    assert "recheck_inventory" in text and "os.stat loop" in text


def test_dispatch_smoke(tmp_path: Path) -> None:
    text = run_smoke("dispatch", tmp_path)
    assert "long-poll" in text and "v1 polling" in text


def test_fleet_boot_smoke(tmp_path: Path) -> None:
    text = run_smoke("fleet_boot", tmp_path, timeout=280.0)
    assert "Fleet boot" in text and "x profile" in text and "v1 0.2.0" in text


def test_results_file_is_not_touched_by_plain_smoke(tmp_path: Path) -> None:
    """--smoke alone prints and writes nothing."""
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.placement", "--smoke", "--results", str(results)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not results.exists()
