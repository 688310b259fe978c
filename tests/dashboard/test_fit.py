"""Every dashboard page fits a 1400 px window, with long names and many columns, in
real headless Chromium against a real `depman server`; file names show in full."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.server import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WIDTH = 1400
GiB = 1024**3
SERVER_TYPE = "sdxl-standard-v8-a100-80gb-eu-west"
# Real model files have names like these; the dashboard must show them whole.
DEPS: dict[str, tuple[str, str, int]] = {
    "sdxl-base-1.0-0.9vae": (
        "static",
        "models/checkpoints/sd_xl_base_1.0_0.9vae_refiner_fp16_pruned_emaonly.safetensors",
        6_938_078_334,
    ),
    "sdxl-vae-fp16-fix": (
        "static",
        "models/vae/sdxl_vae_fp16_fix_madebyollin.safetensors",
        334_641_164,
    ),
    "clip-vit-large-patch14": (
        "static",
        "models/clip_vision/clip_vit_large_patch14_openai_laion2b.safetensors",
        1_710_000_000,
    ),
    "lora-film-grain-kodak-portra-400": (
        "dynamic",
        "models/loras/styles/film/film_grain_v2_kodak_portra_400_xl_rank128.safetensors",
        228 * 1024**2,
    ),
    "lora-pixel-art-xl-nerijs": (
        "dynamic",
        "models/loras/sdxl/pixel-art-xl-v1.1-nerijs-rank64.safetensors",
        170 * 1024**2,
    ),
    "juggernaut-xl-v9-rundiffusionphoto2": (
        "dynamic",
        "models/checkpoints/juggernautXL_v9Rundiffusionphoto2_fp16_pruned.safetensors",
        7_105_000_000,
    ),
    "controlnet-canny-sdxl-1.0-diffusers": (
        "dynamic",
        "models/controlnet/diffusers_xl_canny_full_controlnet_sdxl_1.0.safetensors",
        2_500_000_000,
    ),
    "ip-adapter-plus-face-sdxl-vit-h": (
        "dynamic",
        "models/ipadapter/ip-adapter-plus-face_sdxl_vit-h_laion2B-s32B-b79K.safetensors",
        848_000_000,
    ),
}
STATIC = [dep for dep, (kind, _, _) in DEPS.items() if kind == "static"]
DYNAMIC = [dep for dep, (kind, _, _) in DEPS.items() if kind == "dynamic"]
INSTANCES = {
    "vast-14620331-rtx4090-eu-west-2": "2001:db8:85a3:0:0:8a2e:370:7334",
    "salad-3f9c1e2a-7b4d-4e8f-9a0b-1c2d3e4f5a6b": "203.0.113.117",
    "vast-14701205": "198.51.100.8",
}
DISK_TOTAL = 500 * GiB
RECEIPT_DEP = "lora-pixel-art-xl-nerijs"


def register(server: RunningServer, instance_id: str) -> str:
    status, body = server.request(
        "POST",
        "/api/dependencies/register",
        {
            "serverType": SERVER_TYPE,
            "agentVersion": "dependency-agent/0.10.147+g3f9c1e2-cuda12.4",
            "instanceId": instance_id,
            "provider": "vast",
        },
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, body
    return str(body["agentToken"])


def agent_call(server: RunningServer, token: str, method: str, path: str, body: Any = None) -> Any:
    status, answer = server.request(
        method, "/api/dependencies" + path, body, {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, (path, status, answer)
    return answer


def disk(used: int) -> dict[str, int]:
    # As statvfs reports it: 5% of the blocks are reserved for root.
    reserved = DISK_TOTAL // 20
    return {"totalBytes": DISK_TOTAL, "freeBytes": DISK_TOTAL - used - reserved, "usedBytes": used}


def build_fleet(server: RunningServer) -> dict[str, str]:
    """Catalog, profile, type, instances; heartbeats with long downloads; a failed item;
    jobs that need many models. Answers each instance's agent token."""
    for dep_id, (kind, path, size) in DEPS.items():
        status, body = server.admin(
            "PUT",
            f"/admin/deps/{dep_id}",
            {
                "url": f"https://huggingface.co/some-org/{dep_id}/resolve/main/{Path(path).name}",
                "auth": "hf_token",
                "destRelativePath": path,
                "expectedSizeBytes": size,
                "sha256": hashlib.sha256(dep_id.encode()).hexdigest(),
                "kind": kind,
            },
        )
        assert status == 200, body
    profile = {
        "staticDepIds": STATIC,
        "prefetchOnBoot": True,
        "dynamicPolicy": {"enabled": True, "minFreeBytes": 20 * GiB, "maxDynamicBytes": 150 * GiB},
    }
    assert server.admin("PUT", "/admin/profiles/sdxl-core-long", profile)[0] == 200
    management = {"mode": "dependency_manager_v1", "profileId": "sdxl-core-long"}
    status, body = server.admin(
        "PUT", f"/admin/server-types/{SERVER_TYPE}", {"modelManagement": management}
    )
    assert status == 200, body
    tokens = {}
    for instance_id, ip in INSTANCES.items():
        doc = {"ip": ip, "serverType": SERVER_TYPE}
        assert server.admin("PUT", f"/admin/instances/{instance_id}", doc)[0] == 200
        tokens[instance_id] = register(server, instance_id)
    first, second, _ = INSTANCES
    downloads = [
        {
            "depId": dep_id,
            "stage": "downloading",
            "downloadedBytes": DEPS[dep_id][2] // 3,
            "expectedBytes": DEPS[dep_id][2],
            "throughputBytesPerSec": 91_000_000,
            "tool": "aria2c",
            "destRelativePath": DEPS[dep_id][1],
        }
        for dep_id in DYNAMIC[:3]
    ]
    for instance_id, token in tokens.items():
        agent_call(
            server,
            token,
            "POST",
            "/heartbeat",
            {
                "instanceId": instance_id,
                "installedStaticDepIds": STATIC,
                "installedDynamicDepIds": DYNAMIC[3:] if instance_id == first else [],
                "downloadingDepIds": [d["depId"] for d in downloads],
                "failedDepIds": [DYNAMIC[4]] if instance_id == second else [],
                "diskStats": {**disk(180 * GiB), "path": "/workspace/ComfyUI/models"},
                "dynamicBytesUsed": 12 * GiB,
                "queueDepth": 3,
                "activeDownloads": downloads,
            },
        )
    # Jobs needing every model: they wait on long-named deps; one fails with a long error.
    for n in range(4):
        job_id = f"render-2026-12-07-{n:04d}"
        job_doc = {"serverType": SERVER_TYPE, "depIds": list(DEPS), "jobId": job_id}
        status, job = server.admin("POST", "/jobs", job_doc)
        assert status == 200, job
    items = agent_call(server, tokens[second], "GET", f"/queue?instanceId={second}&limit=25")
    for item in items["items"][:1]:
        report = {
            "instanceId": second,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "diskStats": disk(180 * GiB),
            "dynamicBytesUsed": 12 * GiB,
        }
        agent_call(server, tokens[second], "POST", "/status", {**report, "state": "running"})
        error = (
            "Download failed after 3 attempts: HTTP 403 from cdn-lfs-us-1.hf.co for "
            f"{DEPS[item['depId']][1]} (gated repository: accept the license on the model "
            "page, then set HF_TOKEN in the template's environment)"
        )
        agent_call(
            server, tokens[second], "POST", "/status", {**report, "state": "failed", "error": error}
        )
    # A receipt for a file the instance then no longer holds (deleted by hand).
    first_token = tokens[first]
    items = agent_call(server, first_token, "GET", f"/queue?instanceId={first}&limit=25")
    [item] = [i for i in items["items"] if i["depId"] == RECEIPT_DEP]
    kind, path, size = DEPS[RECEIPT_DEP]
    report = {
        "instanceId": first,
        "itemId": item["itemId"],
        "depId": RECEIPT_DEP,
        "op": item["op"],
        "diskStats": disk(180 * GiB),
        "dynamicBytesUsed": 12 * GiB,
    }
    agent_call(server, first_token, "POST", "/status", {**report, "state": "running"})
    receipt = {
        "algorithm": "sha256",
        "sha256": hashlib.sha256(RECEIPT_DEP.encode()).hexdigest(),
        "sizeBytes": size,
        "mtimeNs": "1733550000000000000",
        "verifiedAtMs": 1733550000000,
        "destRelativePath": path,
        "finalPathVerified": True,
        "agentVersion": "dependency-agent/0.10.147",
    }
    agent_call(
        server,
        first_token,
        "POST",
        "/status",
        {**report, "state": "succeeded", "verification": receipt},
    )
    return tokens


@pytest.fixture
def narrow_page() -> Iterator[Any]:
    """A 1400 px wide page in headless Debian Chromium."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def clipped_texts(page: Any) -> list[str]:
    """Texts of the page's elements whose content is cut off (wider than their box)."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('main *')]
                .filter(el => el.children.length === 0 && el.innerText
                        && el.scrollWidth > el.clientWidth + 1
                        && getComputedStyle(el).overflow !== 'visible')
                .map(el => el.innerText)"""
        )
    )


def test_every_page_fits_1400_px_with_whole_names_and_true_figures(
    server: RunningServer, narrow_page: Any
) -> None:
    page = narrow_page
    tokens = build_fleet(server)
    first = next(iter(INSTANCES))
    page.goto(server.root_url + "/login")
    assert page_width(page) <= WIDTH
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url(server.root_url + "/")

    pages = {
        "/": f'tr[data-instance="{first}"]',
        f"/instances/{first}": "#instance",
        "/catalog": "#catalog-table",
        "/jobs": "#jobs-table",
        "/audit": "main",
    }
    widths = {}
    for path, ready in pages.items():
        page.goto(server.root_url + path)
        page.locator(ready).first.wait_for()
        widths[path] = page_width(page)
    assert all(width <= WIDTH for width in widths.values()), widths

    # Whole file names: on the catalog and the instance page, every model path is
    # there in full and nothing is cut off.
    for path in ("/catalog", f"/instances/{first}"):
        page.goto(server.root_url + path)
        page.locator("main table").first.wait_for()
        text = page.locator("main").inner_text()
        shown = [p for _, p, _ in DEPS.values() if p in text]
        assert shown, (path, text[:2000])
        assert clipped_texts(page) == [], path
    page.goto(server.root_url + "/catalog")
    text = page.locator("#catalog-table").inner_text()
    assert all(p in text for _, p, _ in DEPS.values())

    check_disk_and_receipts(server, page, tokens)


def disk_figures(page: Any, scope: str) -> dict[str, str]:
    cells = page.locator(f"{scope} .disk-meter [data-disk]")
    return {
        cells.nth(i).get_attribute("data-disk"): cells.nth(i).inner_text()
        for i in range(cells.count())
    }


def check_disk_and_receipts(server: RunningServer, page: Any, tokens: dict[str, str]) -> None:
    """A receipt whose file is gone is not shown as matching; the disk figures add up."""
    first = next(iter(INSTANCES))
    page.goto(server.root_url + f"/instances/{first}")
    # The receipt matches the catalog while the file is held...
    row = page.locator(f'#instance tr:has(td:text-is("{RECEIPT_DEP}"))').last
    assert "matches" in row.inner_text()
    # ...and says it holds nothing once a heartbeat no longer lists the file.
    agent_call(
        server,
        tokens[first],
        "POST",
        "/heartbeat",
        {
            "instanceId": first,
            "installedStaticDepIds": STATIC,
            "installedDynamicDepIds": [],
            "downloadingDepIds": [],
            "failedDepIds": [],
            "diskStats": disk(180 * GiB),
            "dynamicBytesUsed": 0,
        },
    )
    page.reload()
    row = page.locator(f'#instance tr:has(td:text-is("{RECEIPT_DEP}"))').last
    assert "not held" in row.inner_text() and "matches" not in row.inner_text()

    # Used, free and the root-reserved rest add up to the total, and each is shown.
    figures = disk_figures(page, "#instance")
    assert figures == {
        "used": "180 GiB used",
        "free": "295 GiB free",
        "total": "of 500 GiB",
        "reserved": "25.0 GiB reserved",
    }
    page.goto(server.root_url + "/")
    assert disk_figures(page, f'tr[data-instance="{first}"]') == figures
