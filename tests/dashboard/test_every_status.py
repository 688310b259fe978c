"""Every dashboard page renders whatever state the fleet's instances are in.

The sample fleet has live, stale and never-seen instances; here one more agent
goes silent and the real maintenance sweep marks it lost, and an operator drains
another, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from depman.core import overview
from depman.core.lost import sweep_lost_instances
from depman.core.operator import set_drained
from depman.core.overview.rows import INSTANCE_STATUSES
from depman.core.policy import Policy
from depman.settings import ServerSettings
from depman.store.models import Instance, QueueItem
from tests.dashboard.conftest import ADMIN_TOKEN, make_app

LIVE_TTL = 90.0


def add_lost_and_drained(engine: Engine, now: datetime) -> None:
    """A registered agent silent for an hour, swept as lost; vast-1002 drained."""
    policy = Policy.from_settings(ServerSettings(instance_lost_seconds=600))
    with Session(engine) as session, session.begin():
        session.add(
            Instance(
                instance_id="vast-gone",
                ip="10.0.0.99",
                server_type="sdxl-worker",
                agent_version="depman-agent/0.1.0",
                agent_token_hash=hashlib.sha256(b"token").hexdigest(),
                registered_at=now - timedelta(hours=2),
                last_heartbeat_at=now - timedelta(hours=1),
                created_at=now - timedelta(hours=2),
            )
        )
        session.add(
            QueueItem(
                instance_id="vast-gone",
                dep_id="lora-pixel-art",
                generation=1,
                op="download",
                state="running",
                priority=0,
                attempts=0,
                enqueued_at=now - timedelta(hours=1),
                started_at=now - timedelta(hours=1),
                updated_at=now - timedelta(hours=1),
            )
        )
    with Session(engine) as session, session.begin():
        assert sweep_lost_instances(session=session, policy=policy, now=now).lost == ["vast-gone"]
        set_drained("vast-1002", True, actor="test", session=session, now=now)
        # A download held back by an upstream cap (core/upstream.py).
        session.add(
            QueueItem(
                instance_id="vast-1003",
                dep_id="lora-film-grain",
                generation=1,
                op="download",
                state="queued",
                priority=0,
                attempts=0,
                enqueued_at=now,
                updated_at=now,
                waiting_upstream="huggingface.co",
            )
        )


def test_every_page_renders_lost_drained_stale_and_never_seen(
    any_seeded: Engine, now: datetime
) -> None:
    add_lost_and_drained(any_seeded, now)
    with Session(any_seeded) as session:
        fleet = overview.fleet_overview(session=session, now=now, live_ttl=LIVE_TTL)
    statuses = {row.instance_id: row.status for row in fleet.instances}
    assert set(statuses.values()) == set(INSTANCE_STATUSES)
    assert statuses["vast-gone"] == "lost"
    assert [row.instance_id for row in fleet.instances if row.drained] == ["vast-1002"]

    pages = ["/", "/catalog", "/jobs", "/jobs?state=failed", "/fragments/fleet"]
    pages += ["/fragments/catalog", "/fragments/jobs"]
    for iid in statuses:
        pages += [f"/instances/{iid}", f"/fragments/instances/{iid}"]
    with TestClient(make_app(any_seeded), follow_redirects=False) as client:
        assert client.post("/login", data={"token": ADMIN_TOKEN, "next": "/"}).status_code == 303
        for path in pages:
            resp = client.get(path)
            assert resp.status_code == 200, (path, resp.text[:500])
        fleet_html = client.get("/fragments/fleet").text
        for iid, status in statuses.items():
            assert f'data-instance="{iid}"' in fleet_html
            assert f"status-{status}" in fleet_html
        assert "drained" in fleet_html
        detail = client.get("/instances/vast-gone").text
        assert "the agent must register again" in detail
        assert "cancelled: instance lost" in detail
        held = client.get("/instances/vast-1003").text
        assert "waiting for huggingface.co" in held
