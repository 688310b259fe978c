"""Dispatch latency and time to ready: from `POST /api/jobs` to the origin, and to `ready`.

    uv run python -m bench.dispatch            # 50 jobs per mode
    uv run python -m bench.dispatch --smoke    # 3 jobs per mode, 1 s polling

One real `depman server` (SQLite), a stdlib origin that records when each file
is first requested, and per mode one agent. Each job needs one 64 KiB dep the
instance does not hold, so placing it queues a download; measured: submit → the
agent's GET arriving at the origin (dispatch), and submit → the job `ready`.
Modes: depman's agent with long-poll off (`DM_POLL_SECONDS=5`), depman's agent
with long-poll (the default; its `succeeded` carries a verification receipt, so
the job goes ready with the report, not with the next heartbeat), and a v1
agent as 0.2.0 behaves (tests/server/v1_client.py's protocol: polls every 5 s,
reports `succeeded` without a receipt, then heartbeats the new inventory, which
is what makes the job ready). Jobs are spaced by a random 0-1 s gap so they
fall at random points of the poll cycle.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ResultTable,
    base_parser,
    median,
    percentile,
    record_results,
    should_record,
)

SERVER_TYPE = "dispatch"
FILE_BYTES = 64 * 1024


def content_of(name: str) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (FILE_BYTES // len(seed) + 1))[:FILE_BYTES]


class Origin:
    """A threaded stdlib HTTP origin that notes the time of each path's first request."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                now = time.time()
                name = self.path.rsplit("/", 1)[-1]
                with origin.lock:
                    origin.first_seen.setdefault(name, now)
                    origin.event(name).set()
                body = content_of(name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class ModeResult:
    mode: str
    dispatch: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)  # the POST /api/jobs round trip alone
    ready: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def fleet_setup(origin: Origin, names: dict[str, list[str]]) -> dict[str, Any]:
    """One instance per mode, each with its own never-held deps."""
    deps = {
        name.split(".")[0]: {
            "url": f"http://127.0.0.1:{origin.port}/files/{name}", "auth": "none",
            "destRelativePath": f"models/loras/{name}",
            "sha256": hashlib.sha256(content_of(name)).hexdigest(),
            "expectedSizeBytes": FILE_BYTES, "kind": "dynamic"}
        for mode_names in names.values() for name in mode_names}
    return {
        "deps": deps,
        "profiles": {"dispatch-profile": {"staticDepIds": [], "prefetchOnBoot": False}},
        # A server type per mode: a job must not land on the other mode's instance.
        "serverTypes": {f"{SERVER_TYPE}-{tag}": {"modelManagement": {
            "mode": "dependency_manager_v1", "profileId": "dispatch-profile"}} for tag in names},
        "instances": {f"inst-{tag}": {"ip": f"127.0.0.{i + 2}",
                                      "serverType": f"{SERVER_TYPE}-{tag}"}
                      for i, tag in enumerate(names)},
    }


def run_mode(server: Any, tmp: Path, tag: str, mode: str, names: list[str],
             poll_seconds: float, origin: Origin, seed: int) -> ModeResult:
    """Start one agent (long-poll on or off), run the jobs one after another, stop it."""
    from tests.support.server import stop_process

    result = ModeResult(mode)
    rng = random.Random(seed)
    instance = f"inst-{tag}"
    ws = tmp / f"ws-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DM_", "DEPMAN_"))}
    env.update({
        "FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": f"{SERVER_TYPE}-{tag}",
        "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret,
        "DM_INSTANCE_ID": instance, "WORKSPACE": str(ws),
        "DM_ALLOWED_DOMAINS": "127.0.0.1", "DM_POLL_SECONDS": str(poll_seconds),
        "DM_LONG_POLL_SECONDS": "25" if tag == "lp" else "0",
        "PYTHONUNBUFFERED": "1",
    })
    (ws / "ComfyUI").mkdir(parents=True)
    log_path = tmp / f"agent-{tag}.log"
    with log_path.open("w") as log:
        agent = subprocess.Popen([sys.executable, "-m", "depman.agent"], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: (server.admin("GET", f"/admin/instances/{instance}")[1] or {})
                       .get("dependencyManager", {}).get("lastHeartbeatAt"),
                       30, "the agent's first heartbeat")
            time.sleep(rng.uniform(0, poll_seconds))
            for i, name in enumerate(names):
                run_job(server, origin, result, f"{tag}-job-{i:03d}", name, f"{SERVER_TYPE}-{tag}")
                time.sleep(rng.uniform(0, 1.0))
        finally:
            stop_process(agent)
    if result.failures:
        result.failures.append("agent log tail: " + log_path.read_text()[-800:])
    return result


def run_modes(jobs: int, poll_seconds: float, origin: Origin) -> list[ModeResult]:
    """One server (SQLite) for both modes; v1 polling first, then long-poll."""
    from tests.support.server import run_server

    tags = ("v1", "lp", "old")
    names = {tag: [f"{tag}-{i:03d}.safetensors" for i in range(jobs)] for tag in tags}
    with tempfile.TemporaryDirectory(prefix="depman-bench-dispatch-") as tmp_name:
        tmp = Path(tmp_name)
        with run_server(f"sqlite:///{tmp / 'dispatch.db'}",
                        extra_env={"DEPMAN_LOG_LEVEL": "warning"}, cwd=tmp) as server:
            status, answer = server.admin("POST", "/admin/fleet", fleet_setup(origin, names))
            if status >= 300:
                raise RuntimeError(f"POST /api/admin/fleet: {status} {answer}")
            return [
                run_mode(server, tmp, "v1", f"v1 polling ({poll_seconds:g} s)", names["v1"],
                         poll_seconds, origin, 1),
                run_mode(server, tmp, "lp", "long-poll", names["lp"], poll_seconds, origin, 2),
                run_v1_agent(server, names["old"], poll_seconds, origin, 3),
            ]


def run_v1_agent(
    server: Any, names: list[str], poll_seconds: float, origin: Origin, seed: int
) -> ModeResult:
    """A v1 agent (0.2.0 behaviour) in a thread: poll, fetch, `succeeded` with no receipt,
    heartbeat the new inventory (the heartbeat makes the job ready)."""
    import urllib.request

    from tests.server.v1_client import V1Client

    result = ModeResult(f"v1 agent 0.2.0, no receipts ({poll_seconds:g} s)")
    client = V1Client(server.base_url, f"{SERVER_TYPE}-old", server.shared_secret,
                      agent_version="0.2.0")
    client.register(instance_id="inst-old")
    client.heartbeat()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_seconds):
            for item in client.poll():
                client.status(item, "running")
                if item["op"] == "download":
                    with urllib.request.urlopen(item["resolved"]["url"], timeout=30) as resp:
                        resp.read()
                client.installed_dynamic.append(item["depId"])
                client.status(item, "succeeded")
            client.heartbeat()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    rng = random.Random(seed)
    try:
        for i, name in enumerate(names):
            run_job(server, origin, result, f"old-job-{i:03d}", name, f"{SERVER_TYPE}-old")
            time.sleep(rng.uniform(0, 1.0))
    finally:
        stop.set()
        thread.join(poll_seconds + 30)
    return result


def run_job(server: Any, origin: Origin, result: ModeResult, job_id: str, name: str,
            server_type: str) -> None:
    t0 = time.time()
    status, answer = server.request("POST", "/api/jobs", {
        "jobId": job_id, "serverType": server_type, "depIds": [name.split(".")[0]]},
        {"Authorization": f"Bearer {server.admin_token}"})
    submitted = time.time() - t0
    if status >= 300:
        result.failures.append(f"{job_id}: submit {status} {answer}")
        return
    if not origin.event(name).wait(30):
        result.failures.append(f"{job_id}: origin never asked for {name}")
        return
    result.dispatch.append(origin.first_seen[name] - t0)
    result.submit.append(submitted)
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline:
        _, job = server.request("GET", f"/api/jobs/{job_id}?waitSeconds=5", headers=auth)
        state = (job or {}).get("state") if isinstance(job, dict) else None
        if state in ("ready", "failed", "running", "completed"):
            break
    if state != "ready":
        result.failures.append(f"{job_id}: ended {state}")
        return
    result.ready.append(time.time() - t0)
    server.request("POST", f"/api/jobs/{job_id}/start", {}, auth)
    server.request("POST", f"/api/jobs/{job_id}/complete", {"ok": True}, auth)


def ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x == x else "—"


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="Jobs per mode (default 50; smoke 4).")
    parser.add_argument("--poll-seconds", type=float,
                        help="v1 poll interval (default 5; smoke 1).")
    args = parser.parse_args(argv)
    jobs = args.jobs or (3 if args.smoke else 50)
    poll = args.poll_seconds or (1.0 if args.smoke else 5.0)
    origin = Origin()
    try:
        results = run_modes(jobs, poll, origin)
    finally:
        origin.close()
    table = ResultTable(
        f"Dispatch latency: POST /api/jobs → agent's first request to the origin ({jobs} jobs)",
        ["mode", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms", "submit p99 ms", "ready p50 ms",
         "ready p99 ms", "failures"])
    for r in results:
        d = r.dispatch
        table.add(r.mode, len(d), ms(median(d)), ms(percentile(d, 90)), ms(percentile(d, 99)),
                  ms(max(d) if d else float("nan")), ms(percentile(r.submit, 99)),
                  ms(median(r.ready)),
                  ms(percentile(r.ready, 99)), len([f for f in r.failures
                                                    if not f.startswith("agent log")]))
    table.print()
    lp = results[1]
    notes = []
    if lp.dispatch:
        p50, p99 = median(lp.dispatch), percentile(lp.dispatch, 99)
        ok = p50 < 0.050 and p99 < 0.200
        notes.append(f"Long-poll dispatch p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                     f"(target p50 < 50 ms, p99 < 200 ms) — {'met' if ok else 'MISSED'}.")
    if lp.ready:
        p50, p99 = median(lp.ready), percentile(lp.ready, 99)
        ok = p50 < 0.100 and p99 < 0.250
        notes.append(f"Long-poll submit → ready p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                     f"(target p50 < 100 ms, p99 < 250 ms) — {'met' if ok else 'MISSED'}.")
    v1 = results[0].dispatch
    if v1 and lp.dispatch:
        cut = median(v1) / median(lp.dispatch)
        notes.append(f"Long-poll cuts median dispatch latency {cut:.0f}x against v1 polling.")
    notes.append("'ready' = submit → the job is ready: the agent downloaded the 64 KiB file "
                 "and verified it; depman's agent's `succeeded` carries the receipt that makes "
                 "the job ready in the report's transaction, the v1 agent's heartbeat does it.")
    for n in notes:
        print(n)
    for r in results:
        for f in r.failures:
            print(f"{r.mode}: {f}", file=sys.stderr)
    if should_record(args):
        cmd = "uv run python -m bench.dispatch" + (" --smoke" if args.smoke else "")
        record_results("Dispatch latency", cmd, [table], notes, args.results,
                       history="dispatch")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
