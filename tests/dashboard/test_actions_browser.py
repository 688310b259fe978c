"""The dashboard's operator buttons in real headless Chromium against a real `depman server`.

Each button's effect is checked where it lands: in what the agent is told (the
queue and the queue-item check), in the job, and in the audit log.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.test_browser import (
    BIG_DEP,
    SERVER_TYPE,
    STATIC,
    FakeAgent,
    browser_page,  # noqa: F401 - the fixture
    describe_fleet,
)
from tests.support.server import RunningServer
from tests.support.wait import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def login(page: Any, server: RunningServer, path: str) -> None:
    page.goto(server.root_url + path)
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(server.root_url + path)


def job_state(server: RunningServer, job_id: str) -> dict[str, Any]:
    status, job = server.admin("GET", f"/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


def test_operator_buttons_reach_the_agent_the_job_and_the_audit_log(
    server: RunningServer,
    browser_page: Any,  # noqa: F811
) -> None:
    page = browser_page
    describe_fleet(server)
    agents = {iid: FakeAgent(server, iid) for iid in ("gpu-a100-01", "gpu-a100-02")}
    agents["gpu-a100-01"].heartbeat(dynamic=["lora-film-grain"], used_gib=90)
    agents["gpu-a100-02"].heartbeat(dynamic=[], used_gib=90, static=STATIC[:2])
    first, second = agents["gpu-a100-01"], agents["gpu-a100-02"]
    # gpu-a100-02's boot prefetch of clip-vit-l fails: something to retry.
    [clip] = wait_until(
        lambda: [i for i in second.queue() if i["depId"] == "clip-vit-l"], 10, "prefetch"
    )
    second.status(clip, "running")
    second.status(clip, "failed", "HTTP 404 from huggingface.co")
    status, job = server.admin(
        "POST",
        "/jobs",
        {
            "serverType": SERVER_TYPE,
            "depIds": ["lora-film-grain", BIG_DEP],
            "jobId": "render-ops-1",
        },
    )
    assert status == 200 and job["instanceId"] == "gpu-a100-01", job
    [big] = wait_until(lambda: [i for i in first.queue() if i["depId"] == BIG_DEP], 10, "item")
    first.status(big, "running")

    # Cancel the running download a job waits for: the browser asks first, naming the job.
    login(page, server, "/instances/gpu-a100-01")
    questions: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept() if answer["accept"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    row = page.locator(f'#instance [data-item-actions="{BIG_DEP}"]')
    row.locator("input[name=reason]").fill("wrong checkpoint")
    row.locator('button[data-action="cancel-item"]').click()
    assert len(questions) == 1 and "render-ops-1" in questions[0], questions
    check_path = f"/queue-item?instanceId=gpu-a100-01&itemId={big['itemId']}"
    assert first.call("GET", check_path)["item"]["cancelReason"] is None  # declined: nothing
    # Posted without the confirmation (no script, a stale page), it is refused naming the job.
    token = page.locator('#instance input[name="csrf"]').first.get_attribute("value")
    refused = page.request.post(
        server.root_url + "/actions/items/cancel",
        form={"csrf": token, "instance_id": "gpu-a100-01", "dep_id": BIG_DEP, "back": "/"},
        max_redirects=0,
    )
    assert refused.status == 303 and "render-ops-1" in refused.headers["location"]
    assert first.call("GET", check_path)["item"]["cancelReason"] is None
    answer["accept"] = True
    row.locator('button[data-action="cancel-item"]').click()
    page.locator("#action-notice").wait_for()
    # The notice says what happened, and the row agrees: cancelling until the agent stops.
    assert "stops the download at its next check" in page.locator("#action-notice").inner_text()
    item_row = page.locator(f'#instance tr:has([data-item-actions="{BIG_DEP}"])')
    assert "cancelling" in item_row.inner_text()
    assert item_row.locator('button[data-action="cancel-item"]').count() == 0
    check = first.call("GET", check_path)["item"]
    assert check["cancelReason"] == "wrong checkpoint"
    first.status(big, "cancelled", "Dependency queue item cancelled: wrong checkpoint")
    moved = job_state(server, "render-ops-1")
    assert moved["instanceId"] == "gpu-a100-02" or moved["state"] == "failed"
    page.wait_for_function(
        """dep => {
            const cell = document.querySelector(`#instance [data-item-actions="${dep}"]`);
            return cell && cell.closest("tr").innerText.includes("cancelled");
        }""",
        arg=BIG_DEP,
    )
    entry = page.locator('#instance-actions tr[data-audit-action="cancel_item"]')
    entry.wait_for()
    assert "dashboard@127.0.0.1" in entry.inner_text() and "wrong checkpoint" in entry.inner_text()

    # Delete a dynamic dep: the agent gets a delete item.
    page.locator('#instance form[data-delete="lora-film-grain"] button').click()
    page.locator("#action-notice").wait_for()
    items = first.queue()
    assert [(i["depId"], i["op"]) for i in items if i["op"] == "delete"] == [
        ("lora-film-grain", "delete")
    ]
    # A static dep is refused without force, queued with it.
    static_form = page.locator(f'#instance form[data-delete="{STATIC[0]}"]')
    static_form.locator("button").click()
    page.locator("#action-refused").wait_for()
    assert "force" in page.locator("#action-refused").inner_text()
    static_form = page.locator(f'#instance form[data-delete="{STATIC[0]}"]')
    static_form.locator("input[name=force]").check()
    static_form.locator("button").click()
    page.locator("#action-notice").wait_for()
    assert STATIC[0] in {i["depId"] for i in first.queue() if i["op"] == "delete"}

    # Drain: no new job is placed here.
    page.locator('#drain-state button[data-action="drain"]').click()
    page.locator("#action-notice").wait_for()
    assert "drained" in page.locator("#drain-state").inner_text()
    status, blocked = server.admin(
        "POST", "/jobs", {"serverType": SERVER_TYPE, "depIds": [STATIC[0]], "jobId": "render-ops-2"}
    )
    assert status == 200 and blocked["instanceId"] != "gpu-a100-01", blocked

    page.goto(server.root_url + "/")
    assert "drained" in page.locator('tr[data-instance="gpu-a100-01"]').inner_text()

    # Retry the failed prefetch on the other instance: handed out with forceRetry.
    page.goto(server.root_url + "/instances/gpu-a100-02")
    page.locator('[data-item-actions="clip-vit-l"] button[data-action="retry-item"]').click()
    page.locator("#action-notice").wait_for()
    again = [i for i in second.queue() if i["depId"] == "clip-vit-l"]
    assert again and again[0]["forceRetry"] is True and again[0]["itemId"] != clip["itemId"]

    # Cancel a job from the jobs page.
    page.goto(server.root_url + "/jobs")
    page.locator('#job-render-ops-2 button[data-action="cancel-job"]').click()
    page.locator("#action-notice").wait_for()
    cancelled = job_state(server, "render-ops-2")
    assert cancelled["state"] == "failed" and "cancelled" in cancelled["error"]

    # Everything is in the audit log, with who and what.
    page.click("nav a[href='/audit']")
    for action in ("cancel_item", "delete_dep", "drain", "retry_item", "cancel_job"):
        page.locator(f'#audit tr[data-audit-action="{action}"]').first.wait_for()
    assert page.locator('#audit tr[data-audit-action="delete_dep"]').count() == 2

    # Forged posts are refused: no form token, or another site's origin.
    url = server.root_url + "/actions/instances/drain"
    form = {"instance_id": "gpu-a100-02", "drained": "true", "back": "/"}
    assert page.request.post(url, form=form, max_redirects=0).status == 403
    page.goto(server.root_url + "/instances/gpu-a100-02")
    token = page.locator('#instance input[name="csrf"]').first.get_attribute("value")
    forged = page.request.post(
        url,
        form={**form, "csrf": token},
        headers={"Origin": "https://evil.example"},
        max_redirects=0,
    )
    assert forged.status == 403
    assert server.admin("GET", "/admin/instances/gpu-a100-02")[1]["drained"] is False
    ok = page.request.post(url, form={**form, "csrf": token}, max_redirects=0)
    assert ok.status == 303
    assert server.admin("GET", "/admin/instances/gpu-a100-02")[1]["drained"] is True
