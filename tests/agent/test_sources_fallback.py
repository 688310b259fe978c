"""A file with many sources: the real agent falls back through them against the real server.

One server and one agent process for every fallback; each dep's `url` misbehaves
in one way (tests/support/origin.py) and its `sources` hold a good copy. The
origin counts requests: a bad source is asked a handful of times at most.
"""

from __future__ import annotations

import hashlib
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, instance, items, put
from tests.support.origin import ModelOrigin
from tests.support.server import RunningServer, run_server
from tests.support.wait import wait_until

KiB = 1024
MiB = 1024 * KiB
LOGIN_PAGE = b"<!doctype html><html><body><form>Log in to download</form></body></html>"
UNAUTHORIZED = b'{"error":"Unauthorized","message":"The request requires authentication"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fallback")
    with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp) as running:
        yield running


class Case:
    """One dep: its bytes, how its url misbehaves, where the good copy lives."""

    def __init__(self, origin: ModelOrigin, name: str, size: int, *, good_copy: bool = True,
                 url_host: str | None = None, **misbehaviour: Any) -> None:
        self.name = name
        self.data, self.sha = payload(size, seed=sum(map(ord, name)) * 7919 + len(name))
        self.bad_path = f"/up/{name}.safetensors"
        self.good_path = f"/mirror2/{name}.safetensors"
        served = misbehaviour.pop("data", self.data)
        origin.add(self.bad_path, served, **misbehaviour)
        self.sources: list[str] = []
        if good_copy:
            origin.add(self.good_path, self.data)
            self.sources = [origin.url(self.good_path, host="localhost")]
        self.url = origin.url(self.bad_path, host=url_host)

    def dep(self) -> dict[str, Any]:
        return {"url": self.url, "sources": self.sources, "auth": "none",
                "type": "loras", "filename": f"{self.name}.safetensors", "kind": "static",
                "sha256": self.sha, "expectedSizeBytes": len(self.data)}


def metric(server: RunningServer, reason: str) -> float:
    with urllib.request.urlopen(server.root_url + "/metrics") as resp:
        text = resp.read().decode()
    found = re.search(rf'^depman_bad_sources_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_every_fallback_with_a_real_agent(server: RunningServer, tmp_path: Path) -> None:
    with ModelOrigin() as origin:
        cases = {
            "u503": Case(origin, "u503", 3 * MiB),  # big enough for the segmented probe
            "otherbytes": Case(origin, "otherbytes", 300 * KiB, corrupt="always"),
            "loginpage": Case(origin, "loginpage", 200 * KiB, page=LOGIN_PAGE),
            "unauthorized": Case(origin, "unauthorized", 200 * KiB, page=UNAUTHORIZED,
                                 page_type="application/json"),
            "stall": Case(origin, "stall", 400 * KiB, stall_after=100 * KiB),
            "longwait": Case(origin, "longwait", 100 * KiB),
            "shortwait": Case(origin, "shortwait", 100 * KiB),
            "othersize": Case(origin, "othersize", 100 * KiB, data=b"z" * (50 * KiB)),
            "presigned": Case(origin, "presigned", 100 * KiB, good_copy=False),
            "forbidden": Case(origin, "forbidden", 100 * KiB),
            "allbad": Case(origin, "allbad", 100 * KiB, good_copy=False, corrupt="always"),
        }
        origin.fail_next(cases["u503"].bad_path, 503, count=1000)
        origin.fail_next(cases["longwait"].bad_path, 429, count=1000, retry_after=3600)
        origin.fail_next(cases["shortwait"].bad_path, 429, count=1, retry_after=1)
        # Civitai's answer: a 307 to a presigned URL on another host (allowed here) ...
        presigned = cases["presigned"]
        origin.add("/r2/presigned.bin", presigned.data)
        origin.files[presigned.bad_path].redirect = origin.url("/r2/presigned.bin",
                                                               host="localhost")
        origin.files[presigned.bad_path].redirect_status = 307
        # ... and one to a host DM_ALLOWED_DOMAINS does not name: the next source serves it.
        origin.files[cases["forbidden"].bad_path].redirect = "http://storage.invalid/x"
        origin.files[cases["forbidden"].bad_path].redirect_status = 307
        # Every source of "allbad" serves other bytes of the right length.
        allbad = cases["allbad"]
        origin.add("/second/allbad.bin", allbad.data, corrupt="always")
        allbad.sources = [origin.url("/second/allbad.bin", host="localhost")]

        for name, case in cases.items():
            put(server, f"/admin/deps/{name}", case.dep())
        put(server, "/admin/profiles/p1", {"staticDepIds": list(cases), "prefetchOnBoot": True,
                                           "dynamicPolicy": {"enabled": False}})
        put(server, "/admin/server-types/st",
            {"modelManagement": {"mode": "dependency_manager_v1", "profileId": "p1"}})
        put(server, "/admin/instances/i1", {"ip": "10.0.0.1", "serverType": "st"})

        env = agent_env(server, tmp_path, DM_STALL_SECONDS="2", DM_DOWNLOAD_CONNECTIONS="4",
                        MAX_PARALLEL_DOWNLOADS="4")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=i1")
            done = wait_until(lambda: len(items(server)) == len(cases) and all(
                i["state"] in ("succeeded", "failed") for i in items(server).values()), 120)
            assert done, items(server)
            queue = items(server)
            expected_ok = set(cases) - {"allbad"}
            assert {d for d, i in queue.items() if i["state"] == "succeeded"} == expected_ok, queue
            assert wait_until(lambda: sorted(instance(server).get("installedDepIdsStatic") or [])
                              == sorted(expected_ok), 20), instance(server)
            # The file whose every source served other bytes fails at once, saying so:
            # each source asked once, not once per attempt of the item.
            assert "sha256 mismatch" in queue["allbad"]["error"]
            assert len(origin.requests_for(allbad.bad_path)) == 1
            assert len(origin.requests_for("/second/allbad.bin")) == 1
            # The item says which source it gave up on, and why.
            assert queue["otherbytes"]["error"] == (
                "warning: installed from localhost after giving up on 127.0.0.1 "
                "(sha256_mismatch)"), queue["otherbytes"]
            # Wrong bytes are asked once; 503 and 429 a handful of times at most.
            for name in ("otherbytes", "loginpage", "unauthorized", "othersize"):
                assert len(origin.requests_for(cases[name].bad_path)) == 1, name
            for name in ("u503", "longwait", "stall"):
                assert 1 <= len(origin.requests_for(cases[name].bad_path)) <= 3, name
            # The short Retry-After was waited out: a 429, then the file, from the url.
            assert [r.status for r in origin.requests_for(cases["shortwait"].bad_path)] == [
                429, 200]
            assert not origin.requests_for(cases["shortwait"].good_path)
            assert origin.requests_for("/r2/presigned.bin")
            for reason in ("http_5xx", "http_429", "sha256_mismatch", "not_the_file",
                           "size_mismatch", "stalled"):
                assert metric(server, reason) >= 1, reason
            log = agent.log()
            assert "served wrong bytes" in log and "trying the next one" in log
            assert agent.stop() == 0
    models = tmp_path / "ws/ComfyUI/models/loras"
    for name in expected_ok:
        got = (models / f"{name}.safetensors").read_bytes()
        assert hashlib.sha256(got).hexdigest() == cases[name].sha, name
    assert not (models / "allbad.safetensors").exists()
