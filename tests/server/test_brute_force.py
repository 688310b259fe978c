"""Guessing is slowed, logged and counted; short secrets refused; logout revokes sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.server.fleet import dep_doc, uid
from tests.server.hostile import assert_error_shape, exchange
from tests.support.server import RunningServer

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SUBMIT = "submit-token-" + uid("backoff")

# Failed guesses, logs and counters are the server's: each test reads those of its own.
pytestmark = pytest.mark.own_server


def _login(server: RunningServer, token: str, client: str) -> tuple[int, dict[str, str]]:
    status, headers, _body = exchange(
        server,
        "POST",
        "/login",
        body=urlencode({"token": token, "next": "/"}).encode(),
        headers={**FORM, "X-Forwarded-For": client},
    )
    return status, headers


def test_login_backs_off_after_repeated_failures(server: RunningServer) -> None:
    guess = "guess-" + uid("x")
    for _ in range(5):
        assert _login(server, guess, "198.51.100.7")[0] == 401
    status, headers = _login(server, guess, "198.51.100.7")
    assert status == 429 and int(headers["retry-after"]) >= 1
    # Backing off means the right token waits too; another address is not affected.
    assert _login(server, server.admin_token, "198.51.100.7")[0] == 429
    status, headers = _login(server, server.admin_token, "198.51.100.8")
    assert status == 303 and "depman_session=" in headers["set-cookie"]
    logs = server.logs()
    assert "authentication failed: realm=login client=198.51.100.7" in logs
    assert guess not in logs
    _status, metrics = server.request("GET", "/metrics")
    assert 'depman_auth_failures_total{realm="login"} 5.0' in metrics
    assert 'depman_auth_throttled_total{realm="login"}' in metrics


def test_admin_api_and_register_back_off(server: RunningServer) -> None:
    client = {"X-Forwarded-For": "203.0.113.9"}
    wrong = {**client, "Authorization": "Bearer wrong-" + uid("t")}
    for _ in range(5):
        status, _h, body = exchange(server, "GET", "/api/admin/deps", headers=wrong)
        assert status == 401
    status, headers, body = exchange(server, "GET", "/api/admin/deps", headers=wrong)
    assert status == 429 and headers["retry-after"]
    assert_error_shape(body)
    assert body["error"]["code"] == "too_many_failures"
    register = {**client, "Content-Type": "application/json", "X-DM-Secret": "wrong-secret-123"}
    doc = b'{"serverType": "st", "instanceId": "i1"}'
    for _ in range(5):
        status, _h, _b = exchange(
            server, "POST", "/api/dependencies/register", body=doc, headers=register
        )
        assert status == 401
    status, _h, body = exchange(
        server, "POST", "/api/dependencies/register", body=doc, headers=register
    )
    assert status == 429
    assert "wrong-secret-123" not in server.logs()
    assert server.admin("GET", "/admin/deps")[0] == 200  # other addresses unaffected
    # The dashboard takes the admin token as a bearer header too: guesses there count.
    dashboard = {"X-Forwarded-For": "203.0.113.10", "Authorization": "Bearer guess-1234567890"}
    for _ in range(5):
        assert exchange(server, "GET", "/fragments/fleet", headers=dashboard)[0] == 401
    assert exchange(server, "GET", "/fragments/fleet", headers=dashboard)[0] == 429


@pytest.mark.server_env(DEPMAN_SUBMIT_TOKEN=SUBMIT)
def test_a_valid_submit_token_never_resets_admin_token_guessing(
    server: RunningServer,
) -> None:
    client = {"X-Forwarded-For": "203.0.113.77"}
    guess = {**client, "Authorization": "Bearer guess-" + uid("adm")}
    valid = {**client, "Authorization": f"Bearer {SUBMIT}"}
    statuses: list[int] = []
    for _ in range(4):
        for _ in range(4):
            statuses.append(exchange(server, "GET", "/api/admin/deps", headers=guess)[0])
        assert exchange(server, "GET", "/api/jobs", headers=valid)[0] in (200, 429)
    assert 429 in statuses, statuses
    assert statuses[:5] == [401] * 5
    # Backing off at the admin token covers every door that takes it, the job API too.
    assert exchange(server, "GET", "/api/jobs", headers=guess)[0] == 429
    assert exchange(server, "GET", "/api/jobs", headers=valid)[0] == 429
    # Another address with the submit token is untouched.
    other = {"X-Forwarded-For": "203.0.113.78", "Authorization": f"Bearer {SUBMIT}"}
    assert exchange(server, "GET", "/api/jobs", headers=other)[0] == 200


def test_logout_revokes_the_session_on_every_replica(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    status, headers = _login(first, first.admin_token, "192.0.2.50")
    assert status == 303
    cookie = headers["set-cookie"].split(";", 1)[0]
    for server in (first, second):
        status, _h, _b = exchange(server, "GET", "/", headers={"Cookie": cookie})
        assert status == 200
    status, _h, _b = exchange(first, "POST", "/logout", headers={"Cookie": cookie})
    assert status == 303
    for server in (first, second):
        status, headers, _b = exchange(server, "GET", "/", headers={"Cookie": cookie})
        assert status == 303 and headers["location"].startswith("/login")


def _start(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DEPMAN_", "DM_"))}
    full.update({"DEPMAN_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}", **env})
    return subprocess.run(
        [sys.executable, "-m", "depman", "server", "--port", "0"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEPMAN_ADMIN_TOKEN", "x"),
        ("DEPMAN_ADMIN_TOKEN", "fifteen-chars-x"),
        ("DEPENDENCY_MANAGER_SHARED_SECRET", "short"),
        ("DEPMAN_SUBMIT_TOKEN", "short"),
    ],
)
def test_short_secrets_refuse_to_start(name: str, value: str, tmp_path: Path) -> None:
    result = _start({name: value}, tmp_path)
    assert result.returncode == 2
    assert name in result.stderr and "at least 16 characters" in result.stderr
    assert value not in result.stderr.replace(name, "")


@pytest.mark.server_env(DEPENDENCY_MANAGER_SHARED_SECRET="", DEPMAN_ALLOW_ANY_DESTINATION="1")
def test_open_register_and_any_destination_are_announced(server: RunningServer) -> None:
    logs = server.logs()
    assert "REGISTER IS OPEN" in logs
    assert "DEPMAN_ALLOW_ANY_DESTINATION is on" in logs
    status, body = server.admin(
        "PUT", f"/admin/deps/{uid('node')}", dep_doc("x", destRelativePath="custom_nodes/x/a.py")
    )
    assert status == 200, body
