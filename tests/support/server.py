"""Run a real `depman server` process on loopback for tests."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.hubs import FakeHubs

PG_ADMIN_URL = os.environ.get("DEPMAN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
LISTEN_RE = re.compile(r"listening on (http://[\d.]+:\d+)")
API_RE = re.compile(r"job and admin API on (http://[\d.]+:\d+)")
START_TIMEOUT = 60.0


@dataclass
class RunningServer:
    """A live server process and what a test needs to talk to it."""

    root_url: str
    admin_token: str
    shared_secret: str
    database_url: str
    process: subprocess.Popen[str]
    log_lines: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The API base URL, as agents know it (FCS_API_BASE_URL)."""
        return self.root_url + "/api"

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
        timeout: float = 40.0,
    ) -> tuple[int, Any]:
        """Send one request to `root_url + path`; answer (status, parsed JSON or text)."""
        data = raw_body
        hdrs = {"Accept": "application/json", **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.root_url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def admin(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        """Call `/api` + `path` (e.g. `/admin/deps/x`) with the admin token."""
        return self.request(
            method, "/api" + path, json, {"Authorization": f"Bearer {self.admin_token}"}
        )

    def long_polls_waiting(self, kind: str = "instance") -> int:
        """How many long-polls of `kind` (instance, job) the server has subscribed now."""
        status, text = self.request("GET", "/metrics")
        assert status == 200, text
        found = re.search(rf'^depman_long_polls_waiting{{kind="{kind}"}} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    def await_long_polls(self, more_than: int, kind: str = "instance", timeout: float = 10) -> None:
        """Return once more than `more_than` long-polls of `kind` are subscribed."""
        deadline = time.monotonic() + timeout
        while self.long_polls_waiting(kind) <= more_than:
            assert time.monotonic() < deadline, f"no long-poll of {kind} subscribed"
            time.sleep(0.02)

    def logs(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.log_lines)

    def on_api_port(self, timeout: float = START_TIMEOUT) -> RunningServer:
        """The same server as seen on its `DEPMAN_API_PORT` (the job and admin API process)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.log_lines):
                match = API_RE.search(line)
                if match:
                    return dataclasses.replace(self, root_url=match.group(1))
            if time.monotonic() > deadline:
                raise RuntimeError("no job and admin API announced:\n" + self.logs())
            time.sleep(0.05)


def _pump(stream: Any, sink: list[str], ready: threading.Event, found: list[str]) -> None:
    for line in stream:
        sink.append(line)
        if not found:
            match = LISTEN_RE.search(line)
            if match:
                found.append(match.group(1))
                ready.set()
    ready.set()


_SHARED_HUBS: list[FakeHubs] = []


def shared_fake_hubs() -> FakeHubs:
    """One auto-serving fake of the Hugging Face and Civitai APIs for the test process."""
    if not _SHARED_HUBS:
        _SHARED_HUBS.append(FakeHubs(auto=True).__enter__())
    return _SHARED_HUBS[0]


@contextmanager
def run_server(
    database_url: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[RunningServer]:
    """Start `depman server --port 0`, wait until it answers, stop it afterwards."""
    admin_token = "adm-" + secrets.token_hex(8)
    shared_secret = "sec-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPMAN_", "DM_"))}
    env.update(
        {
            "DEPMAN_ADMIN_TOKEN": admin_token,
            "DEPENDENCY_MANAGER_SHARED_SECRET": shared_secret,
            "DEPMAN_DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    # hf:// and civitai:// sources resolve against a loopback fake, never the network.
    hubs_url = shared_fake_hubs().url
    env.update({"DEPMAN_HF_ENDPOINT": hubs_url, "DEPMAN_CIVITAI_ENDPOINT": hubs_url})
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "depman", "server", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    found: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines, ready, found), daemon=True).start()
    try:
        ready.wait(START_TIMEOUT)
        if not found:
            raise RuntimeError("depman server did not start:\n" + "".join(lines))
        yield RunningServer(
            root_url=found[0],
            admin_token=env["DEPMAN_ADMIN_TOKEN"],
            shared_secret=env.get("DEPENDENCY_MANAGER_SHARED_SECRET", ""),
            database_url=database_url,
            process=proc,
            log_lines=lines,
        )
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate, wait, then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test; answers its SQLAlchemy URL."""
    name = "depman_t_" + secrets.token_hex(6)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server_on(
    backend: str, tmp: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[RunningServer]:
    """A live server on a new database: a SQLite file in `tmp` or a new PostgreSQL one."""
    if backend == "sqlite":
        with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=extra_env, cwd=tmp) as server:
            yield server
    else:
        with postgres_database() as url, run_server(url, extra_env=extra_env, cwd=tmp) as server:
            yield server


def wants_own_server(request: pytest.FixtureRequest) -> bool:
    """Whether the test is marked `own_server` or `server_env` (env vars need a server of
    the test's own: a shared one was started before the test and without them)."""
    node = request.node
    return any(node.get_closest_marker(name) for name in ("own_server", "server_env"))


@contextmanager
def start_own_server(
    request: pytest.FixtureRequest, backend: str, tmp: Path
) -> Iterator[RunningServer]:
    """A live server for this test alone, with its `server_env` marker's env vars."""
    marker = request.node.get_closest_marker("server_env")
    with server_on(backend, tmp, dict(marker.kwargs) if marker else None) as server:
        yield server


@contextmanager
def run_replica(first: RunningServer, *, cwd: Path | None = None) -> Iterator[RunningServer]:
    """A second `depman server` on `first`'s database, with its admin token and secret."""
    env = {
        "DEPMAN_ADMIN_TOKEN": first.admin_token,
        "DEPENDENCY_MANAGER_SHARED_SECRET": first.shared_secret,
    }
    with run_server(first.database_url, cwd=cwd, extra_env=env) as second:
        yield second
