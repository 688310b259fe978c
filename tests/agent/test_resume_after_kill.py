"""Kill the agent's downloader mid-download (SIGKILL), start it again: it resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from depman.agent.sidefiles import partial_path
from tests.agent.conftest import payload
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

MiB = 1024 * 1024
SRC = str(Path(__file__).resolve().parents[2] / "src")


def fetch_cmd(origin: ModelOrigin, dest: Path, sha: str, size: int, connections: int) -> list[str]:
    return [sys.executable, "-m", "depman.agent", "fetch", origin.url("/m/big.bin"), str(dest),
            "--sha256", sha, "--size", str(size), "--connections", str(connections),
            "--min-segment", "1MiB", "--allow-domain", "127.0.0.1"]


@pytest.mark.parametrize("connections", [1, 4])
def test_resume_after_kill(origin: ModelOrigin, tmp_path: Path, connections: int) -> None:
    size = 8 * MiB
    segment = size // connections
    data, sha = payload(size)
    origin.add("/m/big.bin", data, rate=MiB if connections > 1 else 3 * MiB)
    dest = tmp_path / "big.bin"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC}
    first = subprocess.Popen(fetch_cmd(origin, dest, sha, size, connections), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: origin.bytes_served("/m/big.bin") >= 3 * MiB, 30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert not dest.exists()
    assert partial_path(dest.with_name("big.bin")).exists()
    origin.files["/m/big.bin"].rate = None
    second = subprocess.run(fetch_cmd(origin, dest, sha, size, connections), env=env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert dest.read_bytes() == data
    resumed_from = int(second.stdout.split("resumed_from=")[1])
    assert resumed_from > 0
    fetched_twice = origin.bytes_served("/m/big.bin") - size
    assert fetched_twice < segment, (fetched_twice, segment)
