"""The dashboard in real headless Chromium against a real `depman server`.

The fleet is built through the public APIs only: admin PUTs for the catalog,
profile, server type and instances, then v1 register + heartbeats (with the
`activeDownloads` extension) as agents would send them. With
`DEPMAN_SCREENSHOTS=1` each page is saved under docs/img/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import RunningServer
from tests.support.wait import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMG_DIR = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 900}
GiB = 1024**3
MiB = 1024**2
SERVER_TYPE = "sdxl-worker"
PROFILE_ID = "sdxl-v1"
BIG_DEP = "juggernaut-xl-v9"
BIG_SIZE = 7_105_000_000

CATALOG: dict[str, dict[str, Any]] = {
    "sdxl-base-1.0": {"kind": "static", "size": 6_938_078_334, "dir": "checkpoints"},
    "sdxl-vae": {"kind": "static", "size": 334_641_164, "dir": "vae"},
    "clip-vit-l": {"kind": "static", "size": 1_710_000_000, "dir": "clip"},
    "lora-film-grain": {"kind": "dynamic", "size": 228 * MiB, "dir": "loras"},
    "lora-pixel-art": {"kind": "dynamic", "size": 170 * MiB, "dir": "loras"},
    BIG_DEP: {"kind": "dynamic", "size": BIG_SIZE, "dir": "checkpoints"},
}
STATIC = [dep for dep, spec in CATALOG.items() if spec["kind"] == "static"]
# instance id -> (ip, dynamic deps held, disk used GiB); the last one never heartbeats.
INSTANCES: dict[str, tuple[str, list[str], int]] = {
    "gpu-a100-01": ("10.8.0.11", ["lora-film-grain"], 92),
    "gpu-a100-02": ("10.8.0.12", ["lora-pixel-art"], 141),
    "gpu-4090-03": ("10.8.0.13", [], 178),
    "gpu-4090-04": ("10.8.0.14", [], 0),
}
DISK_TOTAL = 200 * GiB

class FakeAgent:
    """Speaks protocol v1 (+ activeDownloads) for one instance, without downloading."""

    def __init__(self, server: RunningServer, instance_id: str) -> None:
        self.server = server
        self.instance_id = instance_id
        status, body = server.request(
            "POST",
            "/api/dependencies/register",
            {
                "serverType": SERVER_TYPE,
                "agentVersion": "depman-agent/0.1.0",
                "instanceId": instance_id,
            },
            {"X-DM-Secret": server.shared_secret},
        )
        assert status == 200, body
        self.token = body["agentToken"]
        self.used = self.dynamic_used = 0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.server.request(
            method,
            "/api/dependencies" + path,
            body,
            {"Authorization": f"Bearer {self.token}"},
        )
        assert status == 200, (path, status, answer)
        return answer

    def heartbeat(
        self,
        *,
        dynamic: list[str],
        used_gib: int,
        static: list[str] | None = None,
        downloads: list[dict[str, Any]] | None = None,
    ) -> Any:
        static = STATIC if static is None else static
        used = self.used = used_gib * GiB
        self.dynamic_used = sum(CATALOG[d]["size"] for d in dynamic)
        downloads = downloads or []
        return self.call(
            "POST",
            "/heartbeat",
            {
                "instanceId": self.instance_id,
                "installedStaticDepIds": static,
                "installedDynamicDepIds": dynamic,
                "downloadingDepIds": [d["depId"] for d in downloads],
                "failedDepIds": [],
                "diskStats": {
                    "totalBytes": DISK_TOTAL,
                    "freeBytes": DISK_TOTAL - used,
                    "usedBytes": used,
                },
                "dynamicBytesUsed": self.dynamic_used,
                "queueDepth": len(downloads),
                "activeDownloads": downloads,
            },
        )

    def queue(self) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/queue?instanceId={self.instance_id}&limit=25")
        return list(answer["items"])

    def status(self, item: dict[str, Any], state: str, error: str | None = None) -> None:
        body = {
            "instanceId": self.instance_id,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "state": state,
            "diskStats": {
                "totalBytes": DISK_TOTAL,
                "freeBytes": DISK_TOTAL - self.used,
                "usedBytes": self.used,
            },
            "dynamicBytesUsed": self.dynamic_used,
        }
        if error:
            body["error"] = error
        self.call("POST", "/status", body)


def describe_fleet(server: RunningServer) -> None:
    """The admin documents of protocol-v1.md, PUT one by one."""
    for dep_id, spec in CATALOG.items():
        status, body = server.admin(
            "PUT",
            f"/admin/deps/{dep_id}",
            {
                "url": f"https://huggingface.co/depman-test/{dep_id}/resolve/main/model.safetensors",
                "auth": "hf_token" if spec["kind"] == "static" else "none",
                "destRelativePath": f"models/{spec['dir']}/{dep_id}.safetensors",
                "expectedSizeBytes": spec["size"],
                "sha256": hashlib.sha256(dep_id.encode()).hexdigest(),
                "kind": spec["kind"],
            },
        )
        assert status == 200, body
    status, body = server.admin(
        "PUT",
        f"/admin/profiles/{PROFILE_ID}",
        {
            "staticDepIds": STATIC,
            "prefetchOnBoot": True,
            "dynamicPolicy": {
                "enabled": True,
                "minFreeBytes": 5 * GiB,
                "maxDynamicBytes": 20 * GiB,
                "evictionBatchMax": 4,
                "pinTtlSeconds": 1800,
            },
        },
    )
    assert status == 200, body
    status, body = server.admin(
        "PUT",
        f"/admin/server-types/{SERVER_TYPE}",
        {"modelManagement": {"mode": "dependency_manager_v1", "profileId": PROFILE_ID}},
    )
    assert status == 200, body
    for instance_id, (ip, _, _) in INSTANCES.items():
        status, body = server.admin(
            "PUT", f"/admin/instances/{instance_id}", {"ip": ip, "serverType": SERVER_TYPE}
        )
        assert status == 200, body


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A fresh page in headless Debian Chromium (never a downloaded browser)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, color_scheme="light")
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Callable[[Any, str], None]:
    """Save docs/img/<name>.png when DEPMAN_SCREENSHOTS=1.

    Session-scoped so it reads the variable before the autouse fixture clears DEPMAN_*.
    """
    enabled = os.environ.get("DEPMAN_SCREENSHOTS") == "1"

    def save(page: Any, name: str) -> None:
        if enabled:
            IMG_DIR.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(IMG_DIR / f"{name}.png"), full_page=True)

    return save


def progress_of(page: Any, dep_id: str) -> float:
    bar = page.locator(f'#instance [data-dep="{dep_id}"] [role="progressbar"]').first
    return float(bar.get_attribute("aria-valuenow"))


@pytest.mark.server_env(DEPMAN_HEARTBEAT_SECONDS="30")
def test_dashboard_shows_a_live_fleet_and_moving_progress(
    server: RunningServer, browser_page: Any, screenshots: Callable[[Any, str], None]
) -> None:
    page, screenshot = browser_page, screenshots
    describe_fleet(server)
    agents = {iid: FakeAgent(server, iid) for iid in list(INSTANCES)[:3]}
    for iid, agent in agents.items():
        _, dynamic, used = INSTANCES[iid]
        # gpu-4090-03 lacks one static dep: its boot prefetch item stays queued.
        static = STATIC[:2] if iid == "gpu-4090-03" else STATIC
        agent.heartbeat(dynamic=dynamic, used_gib=used, static=static)

    # ... and fails, with the agent's error.
    third = agents["gpu-4090-03"]
    [clip] = wait_until(
        lambda: [i for i in third.queue() if i["depId"] == "clip-vit-l"], 10, "the prefetch item"
    )
    third.status(clip, "running")
    third.status(clip, "failed", "Download failed after 3 attempts: HTTP 404 from huggingface.co")

    # A job that needs the lora only gpu-a100-01 holds lands there; the big checkpoint is queued.
    status, job = server.admin(
        "POST",
        "/jobs",
        {
            "serverType": SERVER_TYPE,
            "depIds": ["sdxl-base-1.0", "lora-film-grain", BIG_DEP],
            "jobId": "render-0412",
        },
    )
    assert status == 200, job
    assert job["instanceId"] == "gpu-a100-01", job
    first = agents["gpu-a100-01"]
    [item] = wait_until(
        lambda: [i for i in first.queue() if i["depId"] == BIG_DEP], 10, "the download item"
    )
    first.status(item, "running")

    def progress(done: int, rate: float) -> list[dict[str, Any]]:
        return [
            {"depId": BIG_DEP, "bytesDone": done, "bytesTotal": BIG_SIZE, "bytesPerSecond": rate}
        ]

    first.heartbeat(
        dynamic=["lora-film-grain"], used_gib=92, downloads=progress(BIG_SIZE // 5, 84 * MiB)
    )

    # Two jobs that need nothing new: one completes, one runs.
    for job_id, finish in (("render-0410", True), ("render-0411", False)):
        status, job = server.admin(
            "POST", "/jobs", {"serverType": SERVER_TYPE, "depIds": STATIC, "jobId": job_id}
        )
        assert status == 200, job
        if job["state"] == "ready":
            assert server.admin("POST", f"/jobs/{job_id}/start", {})[0] == 200
            if finish:
                assert server.admin("POST", f"/jobs/{job_id}/complete", {"ok": True})[0] == 200

    # Log in.
    page.goto(server.root_url + "/")
    page.wait_for_url("**/login?next=/")
    screenshot(page, "login")
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    page.locator(".alert").wait_for()
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(server.root_url + "/")

    # The fleet: every instance, live ones marked live, the silent one never seen.
    for iid in INSTANCES:
        page.locator(f'tr[data-instance="{iid}"]').wait_for()
    assert "live" in page.locator('tr[data-instance="gpu-a100-01"] .status').inner_text()
    assert "never" in page.locator('tr[data-instance="gpu-4090-04"] .status').inner_text()
    page.locator('tr[data-instance="gpu-a100-01"] [data-testid="download"]').wait_for()
    screenshot(page, "fleet")

    # One instance: its download, then progress moves with no reload.
    page.click('a[href="/instances/gpu-a100-01"]')
    page.wait_for_url("**/instances/gpu-a100-01")
    page.evaluate("window.__noReload = true")
    before = progress_of(page, BIG_DEP)
    assert before == pytest.approx(20, abs=0.5)
    first.heartbeat(
        dynamic=["lora-film-grain"], used_gib=95, downloads=progress(BIG_SIZE * 3 // 5, 91 * MiB)
    )
    page.wait_for_function(
        """([dep, before]) => {
            const bar = document.querySelector(
                `#instance [data-dep="${dep}"] [role="progressbar"]`);
            return bar && parseFloat(bar.getAttribute("aria-valuenow")) > before;
        }""",
        arg=[BIG_DEP, before],
        timeout=10_000,
    )
    assert progress_of(page, BIG_DEP) == pytest.approx(60, abs=0.5)
    assert page.evaluate("window.__noReload") is True
    assert page.locator("#instance").get_by_text("render-0412").count() >= 1
    page.wait_for_timeout(300)  # let the bar's width transition settle for the picture
    screenshot(page, "instance")

    page.emulate_media(color_scheme="dark")
    page.goto(server.root_url + "/")
    page.locator('tr[data-instance="gpu-a100-01"] [data-testid="download"]').wait_for()
    screenshot(page, "fleet-dark")
    page.emulate_media(color_scheme="light")

    page.click("nav a[href='/catalog']")
    page.locator('#catalog-table tr[data-search^="sdxl-base-1.0"]').wait_for()
    screenshot(page, "catalog")

    page.click("nav a[href='/jobs']")
    page.locator("#job-render-0412").wait_for()
    assert BIG_DEP in page.locator("#job-render-0412 .waiting").inner_text()
    screenshot(page, "jobs")

    # Logging out closes everything again.
    page.click("text=Log out")
    page.wait_for_url("**/login")
    page.goto(server.root_url + "/jobs")
    page.wait_for_url("**/login?next=/jobs")
