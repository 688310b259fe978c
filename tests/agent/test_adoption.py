"""Adoption with proof: files found at destinations before the agent ever fetched them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import payload
from tests.agent.recorder import Recorder
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import (
    agent_env,
    dep,
    finish_job,
    instance,
    items,
    run_job,
    setup_fleet,
)
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

KiB = 1024
OLD = 1_600_000_000  # an mtime long past: the file has not changed for the stable period


def final(queue: dict[str, dict[str, Any]], names: list[str]) -> bool:
    return all(queue.get(n, {}).get("state") in ("succeeded", "failed") for n in names)


def test_only_proven_files_are_adopted(server: Any, tmp_path: Path) -> None:
    blobs = {name: payload(64 * KiB)[0] for name in
             ("hashed", "wrongsha", "sized", "fresh", "nosize", "isdir", "more")}
    models = tmp_path / "ws/ComfyUI/models/loras"
    models.mkdir(parents=True)
    (models / "hashed.bin").write_bytes(blobs["hashed"])          # right bytes
    (models / "wrongsha.bin").write_bytes(payload(64 * KiB)[0])    # same size, other bytes
    (models / "sized.bin").write_bytes(b"operator's own" * 4681 + b"ab")  # 64 KiB, no sha
    os.utime(models / "sized.bin", (OLD, OLD))
    (models / "fresh.bin").write_bytes(b"f" * 64 * KiB)            # no sha, just written
    (models / "nosize.bin").write_bytes(b"unknown")               # neither sha nor size
    (models / "isdir.bin").mkdir()                                 # a directory
    with ModelOrigin() as origin, Recorder(server.root_url) as recorder:
        deps = {}
        for name, data in blobs.items():
            origin.add(f"/m/{name}.bin", data)
            deps[name] = dep(origin, f"/m/{name}.bin", f"models/loras/{name}.bin", data,
                             kind="dynamic")
        for name in ("sized", "fresh", "nosize"):
            deps[name]["sha256"] = None
        deps["nosize"]["expectedSizeBytes"] = None
        # Eviction on with a cap of one byte: whatever is evictable goes after a download.
        setup_fleet(server, deps, static=[], policy={
            "enabled": True, "minFreeBytes": 0, "maxDynamicBytes": 1,
            "evictionBatchMax": 20, "pinTtlSeconds": 0})
        env = agent_env(server, tmp_path, FCS_API_BASE_URL=recorder.url,
                        DM_ADOPT_STABLE_SECONDS="1")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            run_job(server, ["isdir"], "j0")
            adopted = ["hashed", "wrongsha", "sized", "fresh", "nosize"]
            run_job(server, adopted, "j1")
            finish_job(server, "j1")
            assert wait_until(lambda: final(items(server), ["isdir"]), 30), agent.log()
            queue = items(server)
            assert "isdir.bin is a directory" in queue["isdir"]["error"]
            assert all(queue[n]["state"] == "succeeded" for n in adopted)
            fetched = {n for n in blobs if origin.requests_for(f"/m/{n}.bin")}
            assert fetched == {"wrongsha", "nosize"}  # proven files were not downloaded
            agent.wait_for_line(r"Adopted hashed already at .* \(sha256 matches\)")
            agent.wait_for_line(r"Adopted sized already at .* on its size")
            agent.wait_for_line(r"Adopted fresh already at .* on its size")
            receipts = {b["depId"]: b["verification"]
                        for b in recorder.bodies("/dependencies/status")
                        if b.get("state") == "succeeded"}
            assert receipts["hashed"]["algorithm"] == "sha256"
            assert receipts["hashed"]["sha256"] == hashlib.sha256(blobs["hashed"]).hexdigest()
            assert receipts["sized"]["algorithm"] == "size"
            assert receipts["sized"]["sha256"] is None
            assert receipts["sized"]["sizeBytes"] == 64 * KiB
            # One more download runs the eviction pass (cap: one byte) with j1 done: every
            # proven file may go, the ones adopted on their size stay.
            run_job(server, ["more"], "j2")
            finish_job(server, "j2")
            agent.wait_for_line(r"Evicted dynamic dep hashed")
            agent.wait_for_line(r"Evicted dynamic dep nosize")
            assert wait_until(lambda: instance(server).get("installedDepIdsDynamic")
                              == ["fresh", "more", "sized"], 20), instance(server)
            assert agent.stop() == 0
    assert (models / "sized.bin").read_bytes().startswith(b"operator's own")
    assert (models / "isdir.bin").is_dir()


def test_size_adoption_waits_for_a_still_file(server: Any, tmp_path: Path) -> None:
    """A file still changing is not adopted: the agent downloads the catalog's file."""
    data = payload(64 * KiB)[0]
    models = tmp_path / "ws/ComfyUI/models/loras"
    models.mkdir(parents=True)
    growing = models / "growing.bin"
    growing.write_bytes(b"g" * 64 * KiB)
    with ModelOrigin() as origin:
        origin.add("/m/growing.bin", data)
        body = dep(origin, "/m/growing.bin", "models/loras/growing.bin", data, kind="dynamic")
        body["sha256"] = None
        setup_fleet(server, {"growing": body}, static=[])
        env = agent_env(server, tmp_path, DM_ADOPT_STABLE_SECONDS="5")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            # The copy is still being written: its last write is now, not when the test
            # began (a slow start would otherwise have let the file sit still long enough).
            os.utime(growing)
            run_job(server, ["growing"], "j1")
            # The agent is waiting for the file to stay still; the copy goes on meanwhile.
            assert wait_until(lambda: items(server).get("growing", {}).get("state")
                              == "running", 30)
            with open(growing, "r+b") as f:
                f.write(b"G")
            assert wait_until(lambda: final(items(server), ["growing"]), 60), agent.log()
            assert items(server)["growing"]["state"] == "succeeded"
            agent.wait_for_line(r"growing.bin changed while waiting to adopt it")
            assert growing.read_bytes() == data
            assert agent.stop() == 0
