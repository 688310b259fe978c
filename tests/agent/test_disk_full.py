"""A disk that fills up, for real: a small tmpfs holds the workspace (models and state).

Skipped, with the reason, where this process may not mount a filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depman.agent.sidefiles import partial_path
from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, dep, items, setup_fleet
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; answer the bytes written."""
    written = 0
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as out:
        block = b"\0" * MiB
        while True:
            try:
                written += out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[: len(block) // 2]
                if not block:
                    break
    return written


def state_of(workspace: Path) -> dict[str, Any]:
    return json.loads((workspace / "dependency_agent_state.json").read_text())


def test_disk_full_fails_the_item_and_the_agent_keeps_serving(
        server: Any, small_disk: Path, tmp_path: Path) -> None:
    data, _ = payload(24 * MiB, seed=7)
    small, _ = payload(64 * 1024, seed=8)
    workspace = small_disk
    with ModelOrigin() as origin:
        origin.add("/m/big.bin", data, rate=4 * MiB)
        origin.add("/m/small.bin", small)
        setup_fleet(server, {
            "big": dep(origin, "/m/big.bin", "models/checkpoints/big.bin", data),
            "small": dep(origin, "/m/small.bin", "models/loras/small.bin", small),
        }, ["big"])
        env = agent_env(server, tmp_path, WORKSPACE=str(workspace),
                        DM_DOWNLOAD_CONNECTIONS="2")
        partial = partial_path(workspace / "ComfyUI/models/checkpoints/big.bin")
        filler = workspace / "filler.bin"
        with AgentProcess(env) as agent:
            agent.wait_for_line("Downloading big")
            assert wait_until(lambda: partial.exists() and partial.stat().st_blocks > 0, 30)
            fill(filler)  # another process takes the rest of the disk mid-download
            assert wait_until(lambda: items(server).get("big", {}).get("state")
                              == "failed", 60), agent.log()
            error = items(server)["big"]["error"]
            assert "local error: Disk full" in error, error
            assert not partial.exists()  # the partial is removed: its space comes back
            assert not (workspace / "ComfyUI/models/checkpoints/big.bin").exists()
            assert "Connection error" not in agent.log()
            assert agent.proc is not None and agent.proc.poll() is None
            # The state file says so, written whole once there was room again.
            assert wait_until(lambda: "big" in state_of(workspace)["failed"], 30)

            # Full to the last byte: the state write at shutdown fails, cleanly.
            fill(filler)
            assert agent.stop() == 0
            log_before = agent.log()
            assert "Cannot write the state file" in log_before
            assert "big" in state_of(workspace)["failed"]  # the old file, whole
    assert "Traceback" not in log_before

    # A restart on the full disk must not exit: it registers and serves.
    with AgentProcess(env) as again:
        again.wait_for_line("Registered dependency agent", timeout=60)
        # Its first state write (right after register) fails; only then is there room again.
        again.wait_for_line("Cannot write the state file", timeout=60)
        assert again.proc is not None and again.proc.poll() is None
        os.unlink(filler)
        again.wait_for_line("Recovered: state file", timeout=90)
        state = state_of(workspace)
        assert "big" in state["failed"]
        assert again.proc.poll() is None
