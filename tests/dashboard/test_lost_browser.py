"""The fleet page in real headless Chromium once the server has swept an instance as lost."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.test_browser import (
    INSTANCES,
    STATIC,
    FakeAgent,
    browser_page,
    describe_fleet,
    wait_until,
)
from tests.support.server import RunningServer

__all__ = ["browser_page"]  # the fixture, shared with the main browser test

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.mark.server_env(
    DEPMAN_INSTANCE_LOST_SECONDS="2",
    DEPMAN_LIVE_TTL_SECONDS="2",
    DEPMAN_HEARTBEAT_SECONDS="1",
    DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.3",
)
def test_fleet_page_shows_a_lost_instance(server: RunningServer, browser_page: Any) -> None:
    page = browser_page
    describe_fleet(server)
    lost_id = "gpu-a100-01"
    FakeAgent(server, lost_id).heartbeat(dynamic=[], used_gib=10, static=STATIC)
    # The agent goes silent; the maintenance sweep marks it lost.
    wait_until(
        lambda: server.admin("GET", f"/admin/instances/{lost_id}")[1].get("lost"),
        30,
        "the silent instance to be swept as lost",
    )
    server.admin("POST", "/admin/instances/gpu-a100-02/drain", {"drained": True})

    page.goto(server.root_url + "/login?next=/")
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(server.root_url + "/")
    for iid in INSTANCES:
        page.locator(f'tr[data-instance="{iid}"]').wait_for()
    status = page.locator(f'tr[data-instance="{lost_id}"] .status')
    assert "lost" in status.inner_text()
    assert "status-lost" in (status.get_attribute("class") or "")
    # The page keeps refreshing its fragment without an error.
    with page.expect_response(lambda r: "/fragments/fleet" in r.url) as answer:
        pass
    assert answer.value.status == 200
    page.click(f'a[href="/instances/{lost_id}"]')
    page.wait_for_url(f"**/instances/{lost_id}")
    assert "must register again" in page.locator("body").inner_text()
