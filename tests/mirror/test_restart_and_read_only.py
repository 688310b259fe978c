"""A fill survives kill -9 of the server; a read-only https mirror someone else fills."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.mirror.helpers import MiB, blob, fetch, put, put_dep, put_type
from tests.server.v1_client import V1Client
from tests.support.origin import ModelOrigin
from tests.support.s3 import S3Server
from tests.support.server import RunningServer, run_server
from tests.support.wait import wait_until

BUCKET = "restart-mirror"


def entry(server: RunningServer, dep_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", "/admin/mirror")
    assert status == 200, body
    return dict(next(e for e in body["deps"] if e["depId"] == dep_id))


@pytest.mark.slow
def test_a_fill_interrupted_by_kill_9_completes_after_restart(tmp_path: Path) -> None:
    data, sha = blob(12 * MiB)
    key = f"m/sha256/{sha}"
    with S3Server() as s3, ModelOrigin() as origin:
        s3.create_bucket(BUCKET)
        origin.add("/hf/slow.bin", data, rate=2 * MiB)  # a fill of about six seconds
        env = s3.server_env(f"s3://{BUCKET}/m", DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.5",
                            DEPMAN_MIRROR_PART_BYTES=str(5 * MiB))
        database = f"sqlite:///{tmp_path / 'depman.db'}"
        with run_server(database, extra_env=env, cwd=tmp_path) as first:
            put_dep(first, "slow", origin, "/hf/slow.bin", data)  # auto: filled by itself
            assert wait_until(lambda: entry(first, "slow")["bytesDone"] > 0, 60)
            first.process.kill()  # kill -9 mid-fill
            first.process.wait(10)
        assert entry_state_is_not_stored(s3, key)
        origin.add("/hf/slow.bin", data)  # full speed now
        with run_server(database, extra_env=env, cwd=tmp_path) as second:
            assert wait_until(lambda: entry(second, "slow")["state"] == "stored", 60), (
                second.logs())
            assert "interrupted fills are due again" in second.logs()
        assert s3.keys(BUCKET) == [key]
        assert hashlib.sha256(s3.read(BUCKET, key)).hexdigest() == sha
        assert s3.uploads(BUCKET) == []  # the dead fill's parts were aborted


def entry_state_is_not_stored(s3: S3Server, key: str) -> bool:
    """Killed mid-fill: parts may be uploaded, but no object exists under the key."""
    return key not in s3.keys(BUCKET)


def test_a_read_only_mirror_is_probed_and_handed_out(tmp_path: Path) -> None:
    data, sha = blob(2 * MiB)
    absent, _ = blob(MiB)
    with ModelOrigin() as origin:
        origin.add("/hf/ro.bin", data)
        origin.add(f"/copy/sha256/{sha}", data)  # filled by someone else
        origin.add("/hf/absent.bin", absent)
        env = {"DEPMAN_MIRROR_URL": origin.url("/copy"),
               "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.5"}
        with run_server(f"sqlite:///{tmp_path / 'db.sqlite'}", extra_env=env,
                        cwd=tmp_path) as plane:
            put_dep(plane, "ro", origin, "/hf/ro.bin", data)
            put_dep(plane, "absent", origin, "/hf/absent.bin", absent)
            assert wait_until(lambda: entry(plane, "ro")["state"] == "stored", 30)
            assert wait_until(lambda: entry(plane, "absent")["state"] == "failed", 30)
            assert "not in the read-only mirror" in entry(plane, "absent")["error"]
            _status, body = plane.admin("GET", "/admin/mirror")
            assert body["writable"] is False and body["agentHost"] == "127.0.0.1"
            put_type(plane, "ro-t", ["ro", "absent"])
            put(plane, "/admin/instances/ro-fa", {"ip": None, "serverType": "ro-t"})
            field = V1Client(plane.base_url, "ro-t", plane.shared_secret)
            field.register(instance_id="ro-fa", agent_version="0.2.0")
            urls = {i["depId"]: i["resolved"]["url"] for i in field.poll()}
            assert urls == {"ro": origin.url(f"/copy/sha256/{sha}"),
                            "absent": origin.url("/hf/absent.bin")}
            assert fetch(urls["ro"]) == data
            assert origin.bytes_served("/hf/ro.bin") == 0
