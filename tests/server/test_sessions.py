"""Dashboard sessions: one per login; a logout ends exactly that one, in every spelling."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from tests.server.fleet import make_fleet
from tests.server.hostile import exchange
from tests.support.server import RunningServer

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def _login(server: RunningServer) -> str:
    body = urlencode({"token": server.admin_token, "next": "/"}).encode()
    status, headers, _b = exchange(server, "POST", "/login", body=body, headers=FORM)
    assert status == 303
    name, _, value = headers["set-cookie"].split(";", 1)[0].partition("=")
    assert name == "depman_session"
    return value


def _page(server: RunningServer, cookie: str, path: str) -> tuple[int, dict[str, str], str]:
    status, headers, body = exchange(
        server, "GET", path, headers={"Cookie": f"depman_session={cookie}"}
    )
    return status, headers, body


def _drain(server: RunningServer, cookie: str, instance_id: str, csrf: str) -> tuple[int, str]:
    form = {"csrf": csrf, "instance_id": instance_id, "drained": "true", "back": "/"}
    status, headers, _b = exchange(
        server,
        "POST",
        "/actions/instances/drain",
        body=urlencode(form).encode(),
        headers={**FORM, "Cookie": f"depman_session={cookie}", "Origin": server.root_url},
    )
    return status, headers.get("location", "")


def _drained(server: RunningServer, instance_id: str) -> bool:
    status, _h, body = exchange(
        server,
        "GET",
        f"/instances/{instance_id}",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert status == 200
    return 'data-action="undrain"' in body


@pytest.mark.own_server
def test_logout_ends_its_session_in_every_spelling_and_no_other(
    server: RunningServer,
) -> None:
    instance_id = make_fleet(server, sizes={}).add_instance("vast")
    first, second = _login(server), _login(server)
    # Two logins in the same second are still two sessions.
    assert first != second
    status, _h, page = _page(server, first, f"/instances/{instance_id}")
    assert status == 200
    match = CSRF_RE.search(page)
    assert match is not None
    first_csrf = match.group(1)

    status, _h, _b = exchange(
        server, "POST", "/logout", headers={"Cookie": f"depman_session={first}"}
    )
    assert status == 303
    for variant in (first, "0" + first, "00" + first, first.upper(), first + ".", " " + first):
        status, headers, _b = _page(server, variant, f"/instances/{instance_id}")
        assert status == 303 and headers["location"].startswith("/login"), variant
        status, location = _drain(server, variant, instance_id, first_csrf)
        assert status == 303 and location.startswith("/login"), variant
    assert not _drained(server, instance_id)

    # The other login lives on and acts with its own page's token, not the ended one's.
    status, _h, page = _page(server, second, f"/instances/{instance_id}")
    assert status == 200
    match = CSRF_RE.search(page)
    assert match is not None and match.group(1) != first_csrf
    assert _drain(server, second, instance_id, first_csrf)[0] == 403
    status, location = _drain(server, second, instance_id, match.group(1))
    assert status == 303 and "notice=" in location
    assert _drained(server, instance_id)
