"""Where the mirror, the upstream caps and the agent's source fallback meet.

One server (SQLite, DEPMAN_MIRROR_FILL=auto, DEPMAN_UPSTREAM_CONCURRENCY=127.0.0.1=1,
a server-side HF token) on moto's S3 server for the module. The bucket is reached
through a tap (`BucketTap`, host `localhost`) that records what the bucket is sent,
and can answer agents' presigned reads 403 as S3 does once a URL has expired. Each
test has its own origin on 127.0.0.1 (the capped upstream host), counting the
bodies it serves at once. One case runs a server of its own on PostgreSQL (the
slots' advisory locks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.agent.running import AgentProcess
from tests.mirror.helpers import MiB, agent_env, blob, metric, put_dep, put_type
from tests.support.origin import ModelOrigin
from tests.support.s3 import BucketTap, S3Server
from tests.support.server import RunningServer, postgres_database, run_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

BUCKET = "seams"
PREFIX = "fleet"
HOST = "127.0.0.1"
SERVER_HF = "hf-server-token-0001"
AGENT_HF = "hf-agent-token-0002"
KiB = 1024
# The item's warning: served by the upstream (127.0.0.1), the mirror (localhost) left.
GAVE_UP_ON_MIRROR = f"installed from {HOST} after giving up on localhost (http_4xx)"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def tap(s3: S3Server) -> Iterator[BucketTap]:
    with BucketTap(s3.endpoint_url) as running:
        yield running


@pytest.fixture(scope="module")
def server(s3: S3Server, tap: BucketTap,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("seams")
    env = server_env(s3, tap, PREFIX)
    with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=env, cwd=tmp) as running:
        yield running


@pytest.fixture()
def origin() -> Iterator[ModelOrigin]:
    with ModelOrigin(HOST) as running:
        yield running


def mirror_state(server: RunningServer, dep_id: str) -> str | None:
    status, body = server.admin("GET", "/admin/mirror")
    assert status == 200, body
    return next((e["state"] for e in body["deps"] if e["depId"] == dep_id), None)


def queue(server: RunningServer, instance_id: str) -> dict[str, dict[str, Any]]:
    status, body = server.admin("GET", f"/admin/queues/{instance_id}/items")
    assert status == 200, body
    return {item["depId"]: item for item in body["items"]}


def source_bytes(server: RunningServer, instance_id: str) -> dict[str, int]:
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    assert status == 200, body
    return dict(body["sourceBytes"])


def agent(server: RunningServer, tmp_path: Path, server_type: str, n: int,
          **extra: str) -> AgentProcess:
    env = agent_env(server, tmp_path / f"ws-{server_type}-{n}", server_type,
                    f"{server_type}-i{n}")
    return AgentProcess({**env, "DM_DOWNLOAD_CONNECTIONS": "1", **extra})


def installed_file(tmp_path: Path, server_type: str, n: int, dep_id: str) -> bytes:
    path = (tmp_path / f"ws-{server_type}-{n}" / "ComfyUI" / "models" / "checkpoints"
            / f"{dep_id}.safetensors")
    return path.read_bytes()


def bad_sources(server: RunningServer, reason: str) -> float:
    return metric(server, f'depman_bad_sources_total{{reason="{reason}"}}')


def mirrored(server: RunningServer, dep_id: str, origin: ModelOrigin, data: bytes,
             **extra: Any) -> None:
    """Put a catalog entry and wait until the fill (auto) has stored it."""
    put_dep(server, dep_id, origin, f"/up/{dep_id}.bin", data, **extra)
    assert wait_until(lambda: mirror_state(server, dep_id) == "stored", 120), \
        mirror_state(server, dep_id)


def server_env(s3: S3Server, tap: BucketTap, prefix: str) -> dict[str, str]:
    env = s3.server_env(f"s3://{BUCKET}/{prefix}", DEPMAN_MIRROR_FILL="auto",
                        DEPMAN_UPSTREAM_CONCURRENCY=f"{HOST}=1",
                        DEPMAN_HF_TOKEN=SERVER_HF,
                        DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.3",
                        DEPMAN_MIRROR_RETRY_SECONDS="600")
    env["DEPMAN_MIRROR_ENDPOINT_URL"] = tap.endpoint_url
    return env


def share_one_slot(server: RunningServer, origin: ModelOrigin, tmp_path: Path, *,
                   fill_first: bool) -> None:
    """A fill and a real agent's download of another file from the capped host: one
    starts, the other waits for it; never both at the origin, and both complete."""
    filled, _ = blob(4 * MiB)
    fetched, _ = blob(2 * MiB)
    # Slow enough that the fill and the download would overlap without the cap.
    origin.add("/up/fill-me.bin", filled, rate=512 * KiB)
    origin.add("/up/agent-gets.bin", fetched, rate=512 * KiB)
    # No sha256: never mirrored, so the agent takes it from the capped upstream.
    put_dep(server, "agent-gets", origin, "/up/agent-gets.bin", fetched, sha256=None)
    put_type(server, "sa", ["agent-gets"])
    seen_waiting: list[str] = []
    fill_states: set[str | None] = set()

    def item() -> dict[str, Any]:
        found = queue(server, "sa-i0").get("agent-gets") or {}
        if found.get("waitingForUpstream"):
            seen_waiting.append(found["waitingForUpstream"])
        return found

    def done() -> bool:
        fill_states.add(mirror_state(server, "fill-me"))
        return item().get("state") == "succeeded" and "stored" in fill_states

    with ExitStack() as stack:
        if fill_first:
            put_dep(server, "fill-me", origin, "/up/fill-me.bin", filled)
            assert wait_until(lambda: origin.serving == 1, 60)  # the fill streams
        running = stack.enter_context(agent(server, tmp_path, "sa", 0))
        if not fill_first:
            assert wait_until(lambda: origin.serving == 1 and item().get("state") == "running",
                              60), (queue(server, "sa-i0"), running.log())
            put_dep(server, "fill-me", origin, "/up/fill-me.bin", filled)
        assert wait_until(done, 120, interval=0.1), (queue(server, "sa-i0"), running.log())
        assert "Traceback" not in running.log()
    assert origin.max_serving == 1
    if fill_first:
        assert HOST in seen_waiting  # the agent's item waited while the fill held the slot
    else:
        assert seen_waiting == []
    assert installed_file(tmp_path, "sa", 0, "agent-gets") == fetched
    assert len(origin.requests_for("/up/fill-me.bin")) >= 1


def test_a_fill_holds_the_hosts_one_slot_and_an_agents_download_waits(
    server: RunningServer, origin: ModelOrigin, tmp_path: Path
) -> None:
    share_one_slot(server, origin, tmp_path, fill_first=True)


@pytest.mark.postgres
def test_an_agents_download_holds_the_slot_and_the_fill_waits_on_postgresql(
    s3: S3Server, tap: BucketTap, origin: ModelOrigin, tmp_path: Path
) -> None:
    with postgres_database() as database, run_server(
        database, extra_env=server_env(s3, tap, "pg"), cwd=tmp_path
    ) as pg_server:
        share_one_slot(pg_server, origin, tmp_path, fill_first=False)


def test_mirror_reads_are_not_capped_while_upstream_items_wait(
    server: RunningServer, origin: ModelOrigin, tap: BucketTap, tmp_path: Path
) -> None:
    shared, _ = blob(512 * KiB)  # one GET per agent (segments start at 1 MiB)
    upstream_only, _ = blob(1 * MiB)
    origin.add("/up/shared.bin", shared)
    origin.add("/up/upstream-only.bin", upstream_only, rate=512 * KiB)
    mirrored(server, "shared", origin, shared)
    put_dep(server, "upstream-only", origin, "/up/upstream-only.bin", upstream_only,
            sha256=None)
    put_type(server, "sb", ["shared", "upstream-only"])
    # The bucket holds every read until three are in progress at once: capped to one,
    # they never would be.
    tap.hold_reads = 3
    tap.released.clear()
    waiting: dict[str, set[str]] = {"shared": set(), "upstream-only": set()}
    instances = [f"sb-i{n}" for n in range(3)]

    def done() -> bool:
        finished = True
        for iid in instances:
            items = queue(server, iid)
            for dep_id, item in items.items():
                if item.get("waitingForUpstream"):
                    waiting[dep_id].add(iid)
            finished = finished and len(items) == 2 and all(
                i["state"] == "succeeded" for i in items.values())
        return finished

    try:
        with ExitStack() as stack:
            agents = [stack.enter_context(agent(server, tmp_path, "sb", n)) for n in range(3)]
            assert wait_until(done, 180, interval=0.1), {i: queue(server, i) for i in instances}
            for running in agents:
                assert "Traceback" not in running.log()
    finally:
        tap.hold_reads = 0
        tap.release()
    assert tap.max_reading >= 3
    assert waiting["shared"] == set()
    assert len(waiting["upstream-only"]) >= 1
    assert origin.max_serving == 1
    for n in range(3):
        assert installed_file(tmp_path, "sb", n, "shared") == shared
        assert source_bytes(server, f"sb-i{n}")["mirror"] == len(shared)


def test_mirror_gone_the_agent_sends_its_token_to_the_upstream_only(
    server: RunningServer, origin: ModelOrigin, s3: S3Server, tap: BucketTap, tmp_path: Path
) -> None:
    data, sha = blob(1 * MiB)
    entry = origin.add("/up/gated.bin", data, require_auth=f"Bearer {SERVER_HF}")
    mirrored(server, "gated", origin, data, auth="hf_token")
    assert {r.authorization for r in origin.requests_for("/up/gated.bin")} == {
        f"Bearer {SERVER_HF}"}
    entry.require_auth = f"Bearer {AGENT_HF}"
    origin.reset_stats()
    s3.client().delete_object(Bucket=BUCKET, Key=f"{PREFIX}/sha256/{sha}")
    reads_before = len(tap.reads())
    bad_before = bad_sources(server, "http_4xx")
    put_type(server, "sc", ["gated"])

    with agent(server, tmp_path, "sc", 0, HF_TOKEN=AGENT_HF) as running:
        assert wait_until(lambda: queue(server, "sc-i0").get("gated", {}).get("state")
                          == "succeeded", 120), (queue(server, "sc-i0"), running.log())
        assert AGENT_HF not in running.log()
    reads = tap.reads()[reads_before:]
    assert reads, "the agent never tried the mirror"
    with tap.lock:
        sent = [h for _, _, h in tap.requests]
    for token in (AGENT_HF, SERVER_HF):  # neither the agent's nor the fill's reaches the bucket
        assert not any(token in value for headers in sent for value in headers.values())
    assert all("authorization" not in headers for headers in reads)
    asked = origin.requests_for("/up/gated.bin")
    assert asked and {r.authorization for r in asked} == {f"Bearer {AGENT_HF}"}
    assert installed_file(tmp_path, "sc", 0, "gated") == data
    assert source_bytes(server, "sc-i0") == {"mirror": 0, "upstream": len(data)}
    assert bad_sources(server, "http_4xx") - bad_before == 1  # the mirror's 404, once
    assert GAVE_UP_ON_MIRROR in queue(server, "sc-i0")["gated"]["error"]


def test_an_expired_mirror_url_moves_on_to_the_upstream_once(
    server: RunningServer, origin: ModelOrigin, tap: BucketTap, tmp_path: Path
) -> None:
    data, sha = blob(1 * MiB)
    origin.add("/up/expiring.bin", data)
    mirrored(server, "expiring", origin, data)
    origin.reset_stats()
    before = bad_sources(server, "http_4xx")
    reads_before = len(tap.reads())
    tap.deny_reads = True
    put_type(server, "sd", ["expiring"])
    try:
        with agent(server, tmp_path, "sd", 0) as running:
            assert wait_until(lambda: queue(server, "sd-i0").get("expiring", {}).get("state")
                              == "succeeded", 120), (queue(server, "sd-i0"), running.log())
    finally:
        tap.deny_reads = False
    reads = tap.reads()[reads_before:]
    assert len(reads) == 1, len(reads)  # asked once, never in a loop
    assert bad_sources(server, "http_4xx") - before == 1
    assert GAVE_UP_ON_MIRROR in queue(server, "sd-i0")["expiring"]["error"]
    assert installed_file(tmp_path, "sd", 0, "expiring") == data
    assert source_bytes(server, "sd-i0") == {"mirror": 0, "upstream": len(data)}
    assert hashlib.sha256(data).hexdigest() == sha


def test_an_item_once_taken_from_the_upstream_holds_no_slot_when_the_mirror_serves_it(
    server: RunningServer, origin: ModelOrigin, tap: BucketTap, tmp_path: Path
) -> None:
    data, _ = blob(512 * KiB)
    other, _ = blob(256 * KiB)
    # First from the upstream (not yet mirrorable: no sha256), which fails it (404).
    put_dep(server, "restamp", origin, "/up/restamp.bin", data, sha256=None)
    put_type(server, "se", ["restamp"])
    origin.add("/up/other-up.bin", other)
    put_dep(server, "other-up", origin, "/up/other-up.bin", other, sha256=None)
    put_type(server, "sf", ["other-up"])
    with agent(server, tmp_path, "se", 0) as first:
        assert wait_until(lambda: queue(server, "se-i0").get("restamp", {}).get("state")
                          == "failed", 60), (queue(server, "se-i0"), first.log())
        origin.add("/up/restamp.bin", data)
        mirrored(server, "restamp", origin, data)
        # Retried now, it comes from the mirror; the bucket holds the read.
        tap.hold_reads = 99
        tap.released.clear()
        try:
            status, body = server.admin("POST", "/admin/queues/se-i0/items/restamp/retry", {})
            assert status == 200, body
            assert wait_until(lambda: tap.reading == 1 and queue(server, "se-i0")["restamp"][
                "state"] == "running", 60), (queue(server, "se-i0"), first.log())
            # The host's one slot is free: another instance's upstream item goes now.
            waited: list[str] = []

            def other_done() -> bool:
                item = queue(server, "sf-i0").get("other-up") or {}
                if item.get("waitingForUpstream"):
                    waited.append(item["waitingForUpstream"])
                return item.get("state") == "succeeded"

            with agent(server, tmp_path, "sf", 0) as second:
                assert wait_until(other_done, 60, interval=0.1), (queue(server, "sf-i0"),
                                                                   second.log())
            assert waited == []
            # Still held: the mirror download was running throughout.
            assert queue(server, "se-i0")["restamp"]["state"] == "running"
        finally:
            tap.hold_reads = 0
            tap.release()
        assert wait_until(lambda: queue(server, "se-i0")["restamp"]["state"] == "succeeded",
                          60), (queue(server, "se-i0"), first.log())
    assert source_bytes(server, "se-i0")["mirror"] == len(data)
