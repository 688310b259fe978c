"""In use means in use: memory-mapped files and files opened through a linked folder.

Real holder processes keep files mapped or open while a real agent, under eviction
pressure from a real server's jobs, decides what to delete.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from depman.agent.in_use import paths_in_use
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import (
    agent_env,
    dynamic_loras,
    finish_job,
    run_job,
    wait_dynamic,
)
from tests.support.origin import ModelOrigin

# Python's mmap keeps a dup of the descriptor; libc's mmap, as native loaders call it,
# does not: after close() only /proc/<pid>/maps still names the file.
MMAP_HOLDER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
assert addr not in (None, ctypes.c_void_p(-1).value)
os.close(fd)
print("ready", flush=True)
sys.stdin.read()
"""

OPEN_HOLDER = """
import sys
f = open(sys.argv[1], "rb")
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def holding(code: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.communicate("")


def fd_targets(pid: int) -> set[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    return {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}


def test_mapped_and_linked_files_are_in_use(tmp_path: Path) -> None:
    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    mapped, opened = real / "mapped.bin", real / "opened.bin"
    mapped.write_bytes(b"m" * 4096)
    opened.write_bytes(b"o")
    with holding(MMAP_HOLDER, tmp_path / "link/mapped.bin") as holder:
        assert str(mapped) not in fd_targets(holder.pid)  # no descriptor left
        assert str(mapped) in paths_in_use()
    with holding(OPEN_HOLDER, tmp_path / "link/opened.bin"):
        assert str(opened) in paths_in_use()
    assert str(mapped) not in paths_in_use() and str(opened) not in paths_in_use()


def test_mapped_and_linked_files_survive_eviction(server: Any, tmp_path: Path) -> None:
    # The ComfyUI folder the agent is given is a symlink to the volume holding it.
    volume = tmp_path / "volume/ComfyUI"
    volume.mkdir(parents=True)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws/ComfyUI").symlink_to(volume)
    loras = tmp_path / "ws/ComfyUI/models/loras"
    with ModelOrigin() as origin:
        blobs = dynamic_loras(server, origin, ("d1", "d2", "d3", "d4"), pin_ttl_seconds=0)
        with AgentProcess(agent_env(server, tmp_path)) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            for number, name in enumerate(("d1", "d2"), 1):
                run_job(server, [name], f"j{number}")
                finish_job(server, f"j{number}")
            wait_dynamic(server, ["d1", "d2"])
            # A job maps d1 (descriptor closed) and another has d2 open, both through the
            # linked ComfyUI path; d3 pushes the cache over its cap.
            with holding(MMAP_HOLDER, loras / "d1.bin"), holding(OPEN_HOLDER, loras / "d2.bin"):
                run_job(server, ["d3"], "j3")
                finish_job(server, "j3")
                wait_dynamic(server, ["d1", "d2", "d3"])
                assert (volume / "models/loras/d1.bin").read_bytes() == blobs["d1"]
                assert (volume / "models/loras/d2.bin").read_bytes() == blobs["d2"]
                assert "Evicted" not in agent.log()
            # Released: the next download under pressure evicts the least recently used.
            run_job(server, ["d4"], "j4")
            finish_job(server, "j4")
            agent.wait_for_line(r"Evicted dynamic dep d1")
            assert not (volume / "models/loras/d1.bin").exists()
            assert agent.stop() == 0


@pytest.mark.parametrize("holder", [MMAP_HOLDER, OPEN_HOLDER])
def test_paths_in_use_resolve_the_callers_side(tmp_path: Path, holder: str) -> None:
    """The agent's own name for a file (through a link) matches the kernel's real path."""
    from depman.agent.in_use import real_path
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    target = real / "f.bin"
    target.write_bytes(b"x" * 4096)
    with holding(holder, target):
        assert real_path(tmp_path / "alias/f.bin") in paths_in_use()
