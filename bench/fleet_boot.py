"""Fleet boot: N instances cold-boot a profile from a capped upstream, without and with a mirror.

    uv run python -m bench.fleet_boot            # 8 depman agents, 8 files x 128 MiB, K = 4
    uv run python -m bench.fleet_boot --smoke    # 2 agents, 2 files x 4 MiB

One real `depman server` (SQLite) per scenario; an upstream on loopback that
serves at most K requests at once and answers 429 (`Retry-After: 1`) past that,
as Hugging Face does when many instances start together; for the mirror, moto's
standalone S3 server (`tests/support/s3.py`) as the bucket. N depman agents
(real processes, each its own workspace) register as one server type whose
profile prefetches the files; measured until every instance holds the whole
profile: upstream bytes (against the profile's size: the goal is 1.0x with the
mirror, N x without), items that failed on the way, and the time. With the
mirror the clock starts before `depman mirror fill` (the fill is part of the
boot). The same for two v1 field agents (0.2.0 behaviour: one URL, one stream,
a failed item reported `failed`; the server retries it after
`DEPMAN_RETRY_BACKOFF_SECONDS`, set to 5 s here).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import MIB, ResultTable, base_parser, record_results, should_record

SERVER_TYPE = "boot"
BUCKET = "fleet-boot"
RETRY_BACKOFF_SECONDS = "5"


class _QuietServer(http.server.ThreadingHTTPServer):
    """Agents drop connections they no longer need (a source given up on): no traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class CappedUpstream:
    """Files from disk; K requests at a time, 429 past that; counts bytes and 429s."""

    def __init__(self, root: Path, concurrency: int) -> None:
        self.root = root
        self.slots = threading.BoundedSemaphore(concurrency)
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.refused = 0
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if not upstream.slots.acquire(blocking=False):
                    with upstream.lock:
                        upstream.refused += 1
                    self.send_response(429)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    self._serve()
                finally:
                    upstream.slots.release()

            def _serve(self) -> None:
                path = upstream.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first, _, last = ranged[6:].partition("-")
                    start = int(first or 0)
                    end = min(int(last), size - 1) if last else size - 1
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                count = end - start + 1
                self.send_header("Content-Length", str(count))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                with path.open("rb") as fh:
                    try:
                        sent = self.connection.sendfile(fh, start, count)
                    except OSError:
                        sent = 0
                with upstream.lock:
                    upstream.bytes_sent += sent

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def reset(self) -> None:
        with self.lock:
            self.bytes_sent = self.refused = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Scenario:
    """One boot: who boots, with or without the mirror, and what it cost."""

    agents: str  # "depman" or "v1"
    mirror: bool
    seconds: float = float("nan")
    upstream_bytes: int = 0
    refused: int = 0
    failed_items: set[tuple[str, str]] = field(default_factory=set)
    complete: bool = False
    notes: list[str] = field(default_factory=list)


def make_files(root: Path, count: int, size: int) -> dict[str, tuple[str, int]]:
    """`count` files of `size` random bytes: name -> (sha256, size)."""
    files = {}
    for n in range(count):
        name = f"model-{n}.safetensors"
        digest = hashlib.sha256()
        with (root / name).open("wb") as fh:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MIB))
                digest.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        files[name] = (digest.hexdigest(), size)
    return files


def setup_fleet(server: Any, upstream: CappedUpstream, files: dict[str, tuple[str, int]],
                instances: list[str]) -> list[str]:
    dep_ids = []
    for name, (sha, size) in files.items():
        dep_id = name.removesuffix(".safetensors")
        dep_ids.append(dep_id)
        _put(server, f"/admin/deps/{dep_id}", {
            "url": upstream.url(name), "auth": "none", "kind": "static",
            "destRelativePath": f"models/checkpoints/{name}", "sha256": sha,
            "expectedSizeBytes": size})
    _put(server, "/admin/profiles/boot-p", {"staticDepIds": dep_ids, "prefetchOnBoot": True,
                                            "dynamicPolicy": {"enabled": False}})
    _put(server, f"/admin/server-types/{SERVER_TYPE}", {
        "modelManagement": {"mode": "dependency_manager_v1", "profileId": "boot-p"}})
    for instance_id in instances:
        _put(server, f"/admin/instances/{instance_id}", {"ip": None, "serverType": SERVER_TYPE})
    return dep_ids


def _put(server: Any, path: str, body: dict[str, Any]) -> None:
    status, answer = server.admin("PUT", path, body)
    if status not in (200, 201):
        raise RuntimeError(f"PUT {path}: {status} {answer}")


def fill_mirror(server: Any, deadline: float) -> None:
    status, answer = server.admin("POST", "/admin/mirror/fill", {})
    if status != 200:
        raise RuntimeError(f"mirror fill: {status} {answer}")
    while time.monotonic() < deadline:
        _status, body = server.admin("GET", "/admin/mirror")
        states = {e["state"] for e in body["deps"]}
        if states <= {"stored", "failed"}:
            if "failed" in states:
                raise RuntimeError(f"mirror fill failed: {body['deps']}")
            return
        time.sleep(0.5)
    raise RuntimeError("mirror fill did not finish in time")


def holds_profile(server: Any, instance_id: str, dep_ids: list[str]) -> bool:
    status, body = server.admin("GET", f"/admin/instances/{instance_id}")
    held = set((body.get("dependencyManager") or {}).get("installedDepIdsStatic") or [])
    return status == 200 and set(dep_ids) <= held


def failed_items(server: Any, instances: list[str]) -> set[tuple[str, str]]:
    seen = set()
    for instance_id in instances:
        _status, body = server.admin("GET", f"/admin/queues/{instance_id}/items")
        for item in (body or {}).get("items", []):
            if item["state"] == "failed" or item.get("failures"):
                seen.add((instance_id, item["depId"]))
    return seen


def depman_agent(server: Any, workspace: Path, instance_id: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1",
        "FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": SERVER_TYPE,
        "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret, "DM_INSTANCE_ID": instance_id,
        "WORKSPACE": str(workspace), "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
        "DM_HEARTBEAT_SECONDS": "5",
    }
    log = (workspace.parent / f"{instance_id}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "depman.agent"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def v1_agent(server: Any, instance_id: str, stop: threading.Event) -> threading.Thread:
    """A 0.2.0 field agent: poll, one GET of `resolved.url`, verify, report, heartbeat."""
    from tests.server.v1_client import V1Client, V1Error

    client = V1Client(server.base_url, SERVER_TYPE, server.shared_secret)

    def loop() -> None:
        client.register(instance_id=instance_id, agent_version="0.2.0")
        client.heartbeat()
        while not stop.is_set():
            try:
                for item in client.poll():
                    client.status(item, "running")
                    error = _v1_download(item["resolved"])
                    if error:
                        client.status(item, "failed", error)
                    else:
                        client.status(item, "succeeded")
                        client.installed_static.append(item["depId"])
                client.heartbeat()
            except (V1Error, OSError):
                pass
            stop.wait(1.0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _v1_download(resolved: dict[str, Any]) -> str | None:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(resolved["url"], timeout=60) as response:
            while chunk := response.read(MIB):
                digest.update(chunk)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return f"connection: {exc}"
    return None if digest.hexdigest() == resolved.get("sha256") else "sha256 mismatch"


def run_scenario(scenario: Scenario, n: int, upstream: CappedUpstream, s3: Any,
                 files: dict[str, tuple[str, int]], tmp: Path, timeout: float) -> None:
    from tests.support.server import run_server

    tag = f"{scenario.agents}-{'mirror' if scenario.mirror else 'upstream'}"
    work = tmp / tag
    work.mkdir()
    env = {"DEPMAN_RETRY_BACKOFF_SECONDS": RETRY_BACKOFF_SECONDS,
           "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "1"}
    if scenario.mirror:
        s3.create_bucket(f"{BUCKET}-{scenario.agents}")
        env.update(s3.server_env(f"s3://{BUCKET}-{scenario.agents}/models",
                                 DEPMAN_MIRROR_FILL="manual"))
    instances = [f"{tag}-{i}" for i in range(n)]
    upstream.reset()
    with run_server(f"sqlite:///{work / 'depman.db'}", extra_env=env, cwd=work) as server:
        dep_ids = setup_fleet(server, upstream, files, instances)
        started = time.monotonic()
        deadline = started + timeout
        if scenario.mirror:
            fill_mirror(server, deadline)
        stop = threading.Event()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for instance_id in instances:
                if scenario.agents == "depman":
                    procs.append(depman_agent(server, work / instance_id, instance_id))
                else:
                    v1_agent(server, instance_id, stop)
            while time.monotonic() < deadline:
                scenario.failed_items |= failed_items(server, instances)
                if all(holds_profile(server, i, dep_ids) for i in instances):
                    scenario.complete = True
                    break
                time.sleep(0.5)
            scenario.seconds = time.monotonic() - started
            scenario.failed_items |= failed_items(server, instances)
        finally:
            stop.set()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    scenario.upstream_bytes = upstream.bytes_sent
    scenario.refused = upstream.refused
    if not scenario.complete:
        scenario.notes.append(f"{tag}: not every instance held the profile after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, help="depman agents (default 8; smoke 2).")
    parser.add_argument("--files", type=int, help="Files in the profile (default 8; smoke 2).")
    parser.add_argument("--size-mib", type=int, help="MiB per file (default 128; smoke 4).")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="Requests the upstream serves at once before answering 429.")
    parser.add_argument("--v1-agents", type=int, default=2, help="v1 field agents.")
    parser.add_argument("--timeout", type=float, help="Seconds per scenario (default 1200).")
    args = parser.parse_args(argv)
    n = args.agents or (2 if args.smoke else 8)
    count = args.files or (2 if args.smoke else 8)
    size = (args.size_mib or (4 if args.smoke else 128)) * MIB
    timeout = args.timeout or (180.0 if args.smoke else 1200.0)
    profile = count * size

    from tests.support.s3 import S3Server

    tmp = Path(tempfile.mkdtemp(prefix="depman-fleet-boot-"))
    scenarios = [Scenario("depman", False), Scenario("depman", True),
                 Scenario("v1", False), Scenario("v1", True)]
    upstream = None
    try:
        (tmp / "upstream").mkdir()
        files = make_files(tmp / "upstream", count, size)
        upstream = CappedUpstream(tmp / "upstream", args.concurrency)
        with S3Server() as s3:
            for scenario in scenarios:
                agents = n if scenario.agents == "depman" else args.v1_agents
                run_scenario(scenario, agents, upstream, s3, files, tmp, timeout)
    finally:
        if upstream is not None:
            upstream.close()
        shutil.rmtree(tmp, ignore_errors=True)

    table = ResultTable(
        f"Fleet boot: {count} files x {size // MIB} MiB from an upstream serving "
        f"{args.concurrency} requests at once (429 past that)",
        ["agents", "mirror", "instances", "upstream bytes", "x profile", "429s",
         "failed items", "all hold the profile (s)"])
    for s in scenarios:
        agents = n if s.agents == "depman" else args.v1_agents
        table.add(
            "depman" if s.agents == "depman" else "v1 0.2.0", "yes" if s.mirror else "no",
            agents, f"{s.upstream_bytes / MIB:,.0f} MiB", f"{s.upstream_bytes / profile:.2f}x",
            s.refused, len(s.failed_items),
            f"{s.seconds:.1f}" if s.complete else f"incomplete ({s.seconds:.0f})")
    table.print()
    notes = [n for s in scenarios for n in s.notes]
    notes.append("Goal: upstream bytes 1.0x the profile with the mirror (N x without), 0 failed "
                 "items in every scenario. With the mirror the time includes the fill.")
    notes.append("Failed items: queue items seen failed, or with failures, in a 0.5 s sample.")
    for note in notes:
        print(note)
    if should_record(args):
        cmd = "uv run python -m bench.fleet_boot" + (" --smoke" if args.smoke else "")
        record_results("Fleet boot with and without the mirror", cmd, [table], notes,
                       args.results, history="fleet_boot")
    return 0 if all(s.complete for s in scenarios) else 1


if __name__ == "__main__":
    sys.exit(main())
