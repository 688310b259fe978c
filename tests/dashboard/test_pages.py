"""Access control and rendering of the dashboard pages and fragments."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from depman.server.dashboard import auth
from tests.dashboard.conftest import ADMIN_TOKEN, make_app

PAGES = ["/", "/instances/vast-1001", "/catalog", "/jobs", "/jobs?state=failed"]
FRAGMENTS = [
    "/fragments/fleet",
    "/fragments/instances/vast-1001",
    "/fragments/catalog",
    "/fragments/jobs",
]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_pages_redirect_to_login(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/login?next=/")
    assert "vast-1001" not in resp.text


@pytest.mark.parametrize("path", FRAGMENTS)
def test_anonymous_fragments_get_401_error_shape(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {"code": "unauthorized", "message": "Dashboard login required."}
    }


def test_wrong_token_is_refused(client: TestClient) -> None:
    resp = client.post("/login", data={"token": "nope", "next": "/"})
    assert resp.status_code == 401
    assert "Invalid token." in resp.text
    assert auth.COOKIE_NAME not in resp.cookies
    assert client.get("/").status_code == 303


def test_login_sets_a_derived_httponly_strict_cookie(client: TestClient) -> None:
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/jobs"})
    assert resp.status_code == 303 and resp.headers["location"] == "/jobs"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    value = resp.cookies[auth.COOKIE_NAME]
    assert ADMIN_TOKEN not in value and ADMIN_TOKEN not in cookie
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil"])
def test_login_never_redirects_off_site(client: TestClient, target: str) -> None:
    resp = client.post("/login", data={"token": ADMIN_TOKEN, "next": target})
    assert resp.headers["location"] == "/"


def test_bearer_header_is_accepted(client: TestClient) -> None:
    resp = client.get("/fragments/fleet", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status_code == 200 and "vast-1001" in resp.text
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 303


def test_logout_drops_the_session(authed: TestClient) -> None:
    assert authed.get("/").status_code == 200
    resp = authed.post("/logout")
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    assert authed.get("/").status_code == 303


def test_session_expires_and_dies_with_the_token() -> None:
    value = auth.make_session("tok", now=1000.0)
    assert auth.session_valid(value, "tok", now=1001.0)
    assert not auth.session_valid(value, "tok", now=1000.0 + auth.SESSION_SECONDS + 1)
    assert not auth.session_valid(value, "rotated", now=1001.0)
    assert not auth.session_valid("123.abc", "tok", now=time.time())
    assert not auth.session_valid("garbage", "tok")
    expires, session_id, signature = value.split(".")
    forged = f"{10**12}.{session_id}.{signature}"
    assert not auth.session_valid(forged, "tok", now=1001.0)
    assert not auth.session_valid(f"{expires}.{'0' * 32}.{signature}", "tok", now=1001.0)
    assert not auth.session_valid("0" + value, "tok", now=1001.0)
    assert auth.make_session("tok", now=1000.0) != value


def test_no_admin_token_closes_the_dashboard(seeded: Engine) -> None:
    with TestClient(make_app(seeded, admin_token=None), follow_redirects=False) as client:
        assert "no admin token configured" in client.get("/login").text
        resp = client.post("/login", data={"token": "", "next": "/"})
        assert resp.status_code in (401, 422)
        assert client.post("/login", data={"token": "x"}).status_code == 401
        assert client.get("/").status_code == 303


@pytest.mark.parametrize("path", PAGES + FRAGMENTS)
def test_pages_render_with_security_headers(authed: TestClient, path: str) -> None:
    resp = authed.get(path)
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert "<script>" not in resp.text  # no inline script: the CSP forbids it


def test_fleet_page_shows_instances_and_progress(authed: TestClient) -> None:
    html = authed.get("/").text
    for iid in ("vast-1001", "vast-1002", "vast-1003", "vast-flux-7", "vast-1009"):
        assert f'data-instance="{iid}"' in html
    assert 'data-refresh="/fragments/fleet"' in html
    assert 'role="progressbar"' in html and "juggernaut-xl-v9" in html
    assert "4s ago" in html or "5s ago" in html
    assert "20.0 GiB" in html  # the profile's cache cap


def test_instance_page_shows_errors_and_pins(authed: TestClient) -> None:
    html = authed.get("/instances/vast-1002").text
    assert "Missing HF_TOKEN" in html
    assert "controlnet-canny-sdxl.2" in html
    html = authed.get("/instances/vast-1001").text
    assert "Pinned deps" in html and "job-a1" in html


def test_unknown_instance_is_a_404_page(authed: TestClient) -> None:
    resp = authed.get("/instances/nope")
    assert resp.status_code == 404 and "No instance nope" in resp.text
    assert authed.get("/fragments/instances/nope").status_code == 404


def test_output_is_escaped(authed: TestClient, seeded: Engine) -> None:
    from sqlalchemy.orm import Session

    from depman.store.models import QueueItem

    with Session(seeded) as session:
        item = session.query(QueueItem).filter_by(state="failed").one()
        item.error = "<script>alert(1)</script>"
        session.commit()
    html = authed.get("/instances/vast-1002").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_unknown_job_state_filter_shows_all(authed: TestClient) -> None:
    html = authed.get("/jobs?state=bogus").text
    assert "job-a1" in html and "job-a5" in html


def test_static_files_are_served(client: TestClient) -> None:
    resp = client.get("/dashboard/static/dashboard.js")
    assert resp.status_code == 200 and "data-refresh" in resp.text
    assert client.get("/dashboard/static/dashboard.css").status_code == 200


def test_cancelling_a_download_a_job_waits_for_needs_a_confirmation(authed: TestClient) -> None:
    html = authed.get("/instances/vast-1001").text
    token = re.search(r'name="csrf" value="([^"]+)"', html)
    assert token
    form = {
        "csrf": token[1],
        "instance_id": "vast-1001",
        "dep_id": "controlnet-canny-sdxl",
        "back": "/instances/vast-1001",
    }
    # The page asks first, naming the job; unconfirmed, the server refuses and says why.
    assert re.search(r'data-confirm="Job job-a1 waits for controlnet-canny-sdxl', html)
    resp = authed.post("/actions/items/cancel", data=form)
    assert resp.status_code == 303
    refused = parse_qs(urlsplit(resp.headers["location"]).query)["refused"][0]
    assert refused.startswith("Job job-a1 on vast-1001 waits for controlnet-canny-sdxl")
    assert "controlnet-canny-sdxl" in authed.get("/instances/vast-1001").text
    # Confirmed, the queued item ends at once and the notice names the job it moved.
    resp = authed.post("/actions/items/cancel", data={**form, "confirmed": "true"})
    notice = parse_qs(urlsplit(resp.headers["location"]).query)["notice"][0]
    assert notice == "Cancelled controlnet-canny-sdxl. Job job-a1 moved or failed."


def test_catalog_shows_further_sources(authed: TestClient) -> None:
    html = authed.get("/catalog").text
    assert "+1 source" in html and "https://mirror.example/sdxl-base.safetensors" not in html
    assert "further sources, tried in order: mirror.example" in html
