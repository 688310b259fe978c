"""The agent against a fake control plane that answers what no server should send.

Each fault is real: 302/400/404/413 answers, ``"items": null``, an HTML page
instead of JSON, a non-object ``resolved``, ``minFreeBytes: "lots"``, refused
statuses and heartbeats, URLs with spaces, control characters and tokens, an
endless body, a file name of 250 characters. The agent must keep serving.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from depman.agent.sidefiles import partial_path
from tests.agent.conftest import payload
from tests.agent.fakes import EndlessOrigin, FakeControlPlane, answer
from tests.agent.running import AgentProcess
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

QUEUE = "/api/dependencies/queue"
STATUS = "/api/dependencies/status"
HEARTBEAT = "/api/dependencies/heartbeat"
MiB = 1024 * 1024


def env(plane: FakeControlPlane, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"FCS_API_BASE_URL": plane.base_url, "SERVER_TYPE": "st",
            "WORKSPACE": str(tmp_path / "ws"), "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
            "DM_ITEM_RETRY_SECONDS": "0.1", "DM_MIN_SEGMENT_BYTES": "1MiB", **extra}


def item(item_id: str, dep_id: str, url: str, rel: str, **resolved: Any) -> dict[str, Any]:
    return {"itemId": item_id, "depId": dep_id, "op": "download",
            "resolved": {"url": url, "destRelativePath": rel, "auth": "none",
                         "kind": "dynamic", **resolved}}


def final_state(plane: FakeControlPlane, item_id: str) -> dict[str, Any] | None:
    for status in plane.statuses_of(item_id):
        if status.get("state") in ("succeeded", "failed"):
            return status
    return None


@pytest.mark.slow  # the agent backs off after each failed cycle: 1, 2, 4, ... s
def test_unexpected_answers_are_logged_once_and_never_fatal(tmp_path: Path,
                                                            origin: ModelOrigin) -> None:
    data, sha = payload(64 * 1024)
    origin.add("/m/good.bin", data)
    good = item("good1", "d-good", origin.url("/m/good.bin"), "models/loras/good.bin",
                sha256=sha, expectedSizeBytes=len(data))
    malformed = {"itemId": "bad1", "depId": "d-bad", "op": "download", "resolved": "nope"}
    bad_size = item("bad2", "d-bad2", origin.url("/m/good.bin"), "models/loras/b2.bin",
                    expectedSizeBytes="lots")
    policy = {"enabled": True, "minFreeBytes": "lots", "maxDynamicBytes": [1]}
    with FakeControlPlane(profile={"dynamicPolicy": policy}) as plane:
        plane.script(HEARTBEAT, answer(400, {"error": {"code": "bad", "message": "nope"}}))
        plane.script(QUEUE,
                     answer(302, None, Location="http://127.0.0.1:9/elsewhere"),
                     answer(400, {"error": {"code": "bad_request", "message": "no"}}),
                     answer(404, b"<html>not found</html>"),
                     answer(413, b"request entity too large"),
                     answer(200, {"items": None}),
                     answer(200, b"<html>a proxy page</html>"),
                     answer(200, {"items": [malformed, bad_size, good, 7, {"itemId": 1}],
                                  "pinnedDepIds": "everything"}))
        # Three refusals in a row: the status waits in the outbox, later ones queue behind.
        plane.script(STATUS, *[answer(413, b"too large")] * 3, answer(502, b"bad gateway"))
        with AgentProcess(env(plane, tmp_path)) as agent:
            assert plane.wait_for(lambda: final_state(plane, "good1")), agent.log()
            assert plane.wait_for(lambda: final_state(plane, "bad1"))
            assert plane.wait_for(lambda: final_state(plane, "bad2"))
            assert agent.proc is not None and agent.proc.poll() is None, agent.log()
            log = agent.log()
    assert final_state(plane, "good1")["state"] == "succeeded"  # type: ignore[index]
    bad1 = final_state(plane, "bad1")
    assert bad1 is not None and bad1["state"] == "failed"
    assert "resolved is not an object" in bad1["error"]
    bad2 = final_state(plane, "bad2")
    assert bad2 is not None and "expectedSizeBytes" in bad2["error"]
    # Refused statuses were kept and sent again, in order: running before failed.
    assert [s["state"] for s in plane.statuses_of("bad1")] == ["running", "failed"]
    assert (tmp_path / "ws/ComfyUI/models/loras/good.bin").read_bytes() == data
    # Five failed queue answers in a row: one warning line, not one per answer or loop.
    assert log.count("GET /dependencies/queue failed") <= 2, log
    assert log.count("minFreeBytes") == 1, log
    assert "Recovered" in log
    assert "Traceback" not in log


def test_the_expected_size_caps_an_endless_body(tmp_path: Path) -> None:
    with EndlessOrigin() as endless, FakeControlPlane() as plane:
        plane.items = [item("cap1", "d-cap", endless.url("/m/cap.bin"), "models/loras/cap.bin",
                            expectedSizeBytes=1000)]
        with AgentProcess(env(plane, tmp_path)) as agent:
            assert plane.wait_for(lambda: final_state(plane, "cap1")), agent.log()
            assert agent.proc is not None and agent.proc.poll() is None
    cap = final_state(plane, "cap1")
    assert cap is not None and cap["state"] == "failed"
    assert "content error" in cap["error"] and "more than the expected 1000 bytes" in cap["error"]
    assert_space_given_back(tmp_path, "cap.bin")


def test_the_disk_floor_stops_an_endless_body_without_a_size(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    # A floor 24 MiB under what is free now: the body must stop near it. Other tests
    # share this disk, so the floor may already be crossed when the item starts;
    # either way the item fails on the floor, never fills the disk.
    floor = shutil.disk_usage(tmp_path).free - 24 * MiB
    with EndlessOrigin() as endless, FakeControlPlane() as plane:
        plane.items = [item("nosize1", "d-nosize", endless.url("/m/nosize.bin"),
                            "models/loras/nosize.bin")]
        with AgentProcess(env(plane, tmp_path, DM_DYNAMIC_MIN_FREE_BYTES=str(floor))) as agent:
            assert plane.wait_for(lambda: final_state(plane, "nosize1"), 120), agent.log()
            assert agent.proc is not None and agent.proc.poll() is None
    nosize = final_state(plane, "nosize1")
    assert nosize is not None and nosize["state"] == "failed"
    assert "local error" in nosize["error"] and "floor" in nosize["error"]
    assert_space_given_back(tmp_path, "nosize.bin")


def assert_space_given_back(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "ws/ComfyUI/models/loras"
    assert not (folder / name).exists()
    assert not partial_path(folder / name).exists()


def test_urls_are_redacted_everywhere_and_errors_classified(tmp_path: Path,
                                                           origin: ModelOrigin) -> None:
    data, sha = payload(32 * 1024)
    long_name = "n" * 246 + ".bin"  # 250 characters: its side files must still fit
    origin.add("/m/long.bin", data)
    origin.add("/m/redir.bin", b"x",
               redirect=origin.url("/cdn/x y.bin") + "?token=SECRET-REDIRECT-4")
    base = origin.url("/m/")
    with FakeControlPlane() as plane:
        plane.items = [
            item("r1", "d-r1", base + "a b.bin?token=SECRET-SPACE-1", "models/a.bin"),
            item("r2", "d-r2", base + "c\x01.bin?token=SECRET-CTRL-2", "models/c.bin"),
            item("r3", "d-r3", base.replace("http://", "http://u:SECRET-PW-3@")
                 + "missing.bin?sig=SECRET-SIG-3", "models/m.bin"),
            item("r4", "d-r4", base + "redir.bin", "models/r.bin"),
            item("r5", "d-r5", origin.url("/m/long.bin"), f"models/loras/{long_name}",
                 sha256=sha, expectedSizeBytes=len(data)),
            item("r6", "d-r6", origin.url("/m/long.bin"), "models/loras/" + "z" * 300),
        ]
        secret_base = plane.base_url.replace("http://", "http://admin:SECRET-BASE-5@")
        with AgentProcess(env(plane, tmp_path, FCS_API_BASE_URL=secret_base)) as agent:
            for item_id in ("r1", "r2", "r3", "r4", "r5", "r6"):
                assert plane.wait_for(lambda i=item_id: final_state(plane, i)), agent.log()
            log = agent.log()
    errors = {i: (final_state(plane, i) or {}).get("error", "") for i in
              ("r1", "r2", "r3", "r4", "r6")}
    everything = log + "".join(errors.values())
    assert "SECRET" not in everything, everything
    assert "u:" not in errors["r3"] and "admin:" not in log
    assert "local error: Invalid URL" in errors["r1"] and "/m/a b.bin" in errors["r1"]
    assert "local error: Invalid URL" in errors["r2"] and "\\x01" in errors["r2"]
    assert "server error: HTTP 404" in errors["r3"]
    assert "/m/missing.bin" in errors["r3"]
    assert "local error: Invalid URL" in errors["r4"]
    assert "local error" in errors["r6"] and "name too long" in errors["r6"].lower()
    # Local errors are not retried: one attempt each.
    assert "Item r6 attempt" not in log and "Item r1 attempt" not in log
    assert (final_state(plane, "r5") or {}).get("state") == "succeeded", log
    target = tmp_path / "ws/ComfyUI/models/loras" / long_name
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert wait_until(lambda: not partial_path(target).exists(), 5)
