"""An instance whose recent downloads all failed: placed last, flagged on the dashboard."""

from __future__ import annotations

from depman.core.placement import Candidate, rank_candidates
from tests.server.fleet import make_fleet
from tests.support.server import RunningServer


def test_a_failing_candidate_ranks_after_every_healthy_one() -> None:
    deps = {"ckpt": 1000}
    failing = Candidate("a", frozenset({"ckpt"}), free_bytes=10**12, failing=True)
    healthy = Candidate("b", free_bytes=10)
    assert [c.instance_id for c in rank_candidates([failing, healthy], deps)] == ["b", "a"]
    assert [c.instance_id for c in rank_candidates([failing], deps)] == ["a"]  # never excluded


def test_jobs_go_past_an_instance_whose_downloads_all_failed(server: RunningServer) -> None:
    fleet = make_fleet(server, max_active_jobs=4)
    broken = fleet.register(fleet.add_instance("broken"), static=[fleet.deps["a"]])
    healthy = fleet.register(fleet.add_instance("healthy"))
    # Two jobs on the holder of "a" queue b and c there; both downloads fail.
    for dep in ("b", "c"):
        status, job = fleet.submit(["a", dep])
        assert status == 200 and job["instanceId"] == broken.instance_id, job
    items = broken.items()
    for dep in ("b", "c"):
        assert broken.status(items[fleet.deps[dep]], "running")[0] == 200
        status, body = broken.status(
            items[fleet.deps[dep]], "failed", "local error: Download domain not allowed"
        )
        assert status == 200, body
    # It still holds "a", but the next job needing it goes to the healthy instance.
    status, job = fleet.submit(["a"])
    assert status == 200 and job["instanceId"] == healthy.instance_id, job
    for instance, flagged in ((broken, True), (healthy, False)):
        status, page = server.request(
            "GET",
            f"/instances/{instance.instance_id}",
            headers={"Authorization": f"Bearer {server.admin_token}", "Accept": "text/html"},
        )
        assert status == 200
        assert ('data-testid="downloads-failing"' in page) is flagged


def test_the_dashboard_lists_the_instances_holding_a_dep(server: RunningServer) -> None:
    fleet = make_fleet(server)
    holder = fleet.register(fleet.add_instance("holder"), dynamic=[fleet.deps["b"]])
    headers = {"Authorization": f"Bearer {server.admin_token}", "Accept": "text/html"}
    status, page = server.request("GET", f"/catalog/{fleet.deps['b']}", headers=headers)
    assert status == 200
    assert f'data-instance="{holder.instance_id}"' in page and "dynamic" in page
    status, catalog = server.request("GET", "/catalog", headers=headers)
    assert f'href="/catalog/{fleet.deps["b"]}"' in catalog
    assert server.request("GET", "/catalog/no-such-dep", headers=headers)[0] == 404
