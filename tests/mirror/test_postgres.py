"""The mirror on PostgreSQL: two server processes, one fill (the advisory lock), both hand out."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.mirror.helpers import MiB, blob, fetch, put, put_dep, put_type
from tests.server.v1_client import V1Client
from tests.support.origin import ModelOrigin
from tests.support.s3 import S3Server
from tests.support.server import RunningServer, postgres_database, run_server
from tests.support.wait import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
BUCKET = "pg-mirror"


def state_of(server: RunningServer, dep_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", "/admin/mirror")
    assert status == 200, body
    return dict(next(e for e in body["deps"] if e["depId"] == dep_id))


def test_two_replicas_fill_once_and_both_hand_out_the_mirror(tmp_path: Path) -> None:
    data, sha = blob(3 * MiB)
    with S3Server() as s3, ModelOrigin() as origin, postgres_database() as database:
        s3.create_bucket(BUCKET)
        origin.add("/hf/pg.bin", data, rate=4 * MiB)  # long enough for both to look for work
        env = s3.server_env(f"s3://{BUCKET}/pg", DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.3")
        with run_server(database, extra_env=env, cwd=tmp_path) as first:
            same = {**env, "DEPMAN_ADMIN_TOKEN": first.admin_token,
                    "DEPENDENCY_MANAGER_SHARED_SECRET": first.shared_secret}
            with run_server(database, extra_env=same, cwd=tmp_path) as second:
                put_dep(first, "pg", origin, "/hf/pg.bin", data)
                assert wait_until(lambda: state_of(second, "pg")["state"] == "stored", 60)
                assert origin.bytes_served("/hf/pg.bin") == len(data)  # one fill, not two
                assert hashlib.sha256(s3.read(BUCKET, f"pg/sha256/{sha}")).hexdigest() == sha
                put_type(first, "pgt", ["pg"])
                for n, server in enumerate((first, second)):
                    put(server, f"/admin/instances/pg-fa{n}", {"ip": None, "serverType": "pgt"})
                    field = V1Client(server.base_url, "pgt", server.shared_secret)
                    field.register(instance_id=f"pg-fa{n}", agent_version="0.10.105")
                    [item] = field.poll()
                    assert item["resolved"]["mirror"] is True
                    assert fetch(item["resolved"]["url"]) == data
