"""Fleet load: N simulated agents (plus job submissions) against one `depman server`.

    uv run python -m bench.fleet                       # N = 1k, 5k, 10k on SQLite and PostgreSQL
    uv run python -m bench.fleet --backends postgresql --sizes 10000 --agents depman
    uv run python -m bench.fleet --smoke               # 40 agents of each kind, seconds

`--agents v1` speak protocol v1 at the field intervals: register, heartbeat with
~200 deps every 30 s, queue poll every 5 s (±20%), statuses for the items they
get. `--agents depman` follow depman's own agent (`bench/_fleet_depman.py`):
long-poll (25 s idle, 1 s while downloading), heartbeats every 30 s idle, every
5 s while downloading (progress rows) and early after a download.
A job driver submits jobs (POST /api/jobs), starts the ready ones and completes
them, so placement, queueing and inventory changes run too. The simulator runs
in `--workers` processes on the same machine (its CPU is reported, it competes
with the server), over a bounded pool of keep-alive connections, as behind a
reverse proxy. Latency is measured from each request's scheduled time, so
client-side queueing counts. Reported per N and backend: sustained requests/s,
p50/p99 per endpoint, server CPU and RSS, PostgreSQL CPU, and the inventory
row writes the heartbeats caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench._fleet_sim import write_atomic
from bench.common import (
    MIB,
    REPO_ROOT,
    ProcessSampler,
    ResultTable,
    base_parser,
    percentile,
    record_results,
    should_record,
)
from bench.fleetclient import HttpError, Pool
from bench.server_latency import ServerLatency

SERVER_TYPE = "bench"
PROFILE = "bench-profile"
P99_TARGET = 0.200
STALL_SHARE = 0.01  # a second with more than this share of requests over 200 ms is a stall
REGISTER_RATE = 50.0  # agents booting per second during the ramp, unless --boot-rate
BOOT_TIMEOUT = 600.0  # longest wait, past the ramp, for every agent to be up


@dataclass
class Plan:
    sizes: list[int]
    backends: list[str]
    ramp: float
    warmup: float
    duration: float
    poll: float
    heartbeat: float
    download: float
    job_rate: float | None  # jobs/s; None: N / 1000
    job_run: float
    catalog: int
    static: int
    inventory: int
    connections: int
    workers: int | None
    # `depman server --workers` values tried on PostgreSQL (SQLite: always 1).
    server_workers: list[int] = field(default_factory=lambda: [1])
    server_env: dict[str, str] = field(default_factory=dict)  # more DEPMAN_* settings
    profile_dir: Path | None = None  # py-spy samples of the server over each window
    agent_kinds: list[str] = field(default_factory=lambda: ["v1", "depman"])
    long_poll: float = 25.0
    # PostgreSQL: the job driver talks to a process of its own (`depman server --api-port`).
    api_process: bool = False
    boot_rate: float = REGISTER_RATE  # agents starting per second during the ramp


FULL = Plan([1000, 5000, 10000], ["sqlite", "postgresql"], ramp=30, warmup=35, duration=60,
            poll=5, heartbeat=30, download=2, job_rate=None, job_run=10, catalog=2000,
            static=20, inventory=200, connections=64, workers=None, server_workers=[1, 2])
SMOKE = Plan([40], ["sqlite"], ramp=1, warmup=2, duration=4, poll=1, heartbeat=2,
             download=0.2, job_rate=2, job_run=0.5, catalog=100, static=5, inventory=20,
             connections=8, workers=1, long_poll=2)


@dataclass
class Outcome:
    backend: str
    n: int
    server_workers: int = 1
    kind: str = "v1"
    api_process: bool = False  # the job driver used the job and admin API's own process
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0
    server_cpu: float = 0.0
    server_rss: int = 0
    pg_cpu: float | None = None
    sim_cpu: float = 0.0
    machine_busy: float | None = None  # % of all cores busy over the window, every process
    loop_lag: float = 0.0
    inv_writes: int | None = None
    downloads_done: int = 0
    jobs_submitted: int = 0
    jobs_completed: int = 0
    failure: str | None = None
    boot_seconds: float = 0.0
    booted: int = 0
    window_start: float = 0.0
    slow: list[float] = field(default_factory=list)  # seconds into the window, per slow request
    per_second: dict[int, int] = field(default_factory=dict)  # agent requests per second due

    def seconds_view(self) -> list[tuple[int, int, int]]:
        """(second of the window, agent requests due in it, of those >= 200 ms), every second."""
        slow: dict[int, int] = {}
        for t in self.slow:
            slow[int(t)] = slow.get(int(t), 0) + 1
        return [(s, self.per_second.get(s, 0), slow.get(s, 0))
                for s in range(int(self.duration) or len(self.per_second))]

    def stalled_seconds(self, share: float = STALL_SHARE) -> list[tuple[int, int, int]]:
        """The seconds in which more than `share` of the agent requests took >= 200 ms."""
        return [row for row in self.seconds_view() if row[2] > share * max(1, row[1])]

    def worst_second(self) -> float:
        """The largest share of slow agent requests in any one second of the window."""
        return max((slow / max(1, count) for _s, count, slow in self.seconds_view()), default=0.0)
    server_side: list[tuple[str, int, float, float]] = field(default_factory=list)
    # The server's warnings of the window (pauses, slow periodic tasks): (second, line).
    server_warnings: list[tuple[float, str]] = field(default_factory=list)
    # endpoint → {gateway stage: requests}: how many agent requests the memos answered.
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    # pause kind (gc gen N, loop lag, a periodic task) → its pauses over 100 ms in the window
    long_pauses: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]

    @property
    def p99(self) -> float:
        return percentile(self.all_latencies, 99)

    @property
    def holds(self) -> bool:
        return self.failure is None and not sum(self.errors.values()) and self.p99 < P99_TARGET


# ---------------------------------------------------------------------------- setup


def fleet_body(plan: Plan, first: int, count: int, with_catalog: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"instances": {
        f"inst-{i:05d}": {"ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                          "serverType": SERVER_TYPE}
        for i in range(first, first + count)}}
    if with_catalog:
        body["deps"] = {
            f"dep-{i:05d}": {
                "url": f"https://huggingface.co/bench/m/resolve/main/dep-{i:05d}.safetensors",
                "auth": "none",
                "destRelativePath": f"models/{'checkpoints' if i < plan.static else 'loras'}/"
                                    f"dep-{i:05d}.safetensors",
                "expectedSizeBytes": (6 * 1024**3) if i < plan.static else 150 * MIB,
                "kind": "static" if i < plan.static else "dynamic",
            } for i in range(plan.catalog)}
        body["profiles"] = {PROFILE: {
            "staticDepIds": [f"dep-{i:05d}" for i in range(plan.static)],
            "prefetchOnBoot": False,
            "dynamicPolicy": {"enabled": True, "minFreeBytes": 5 * 1024**3,
                              "maxDynamicBytes": 200 * 1024**3, "evictionBatchMax": 20,
                              "pinTtlSeconds": 1800}}}
        body["serverTypes"] = {SERVER_TYPE: {"modelManagement": {
            "mode": "dependency_manager_v1", "profileId": PROFILE}}}
    return body


def setup_fleet(server: Any, plan: Plan, n: int) -> None:
    chunk = 2000
    for first in range(0, n, chunk):
        status, answer = server.admin("POST", "/admin/fleet",
                                      fleet_body(plan, first, min(chunk, n - first), first == 0))
        if status >= 300:
            raise RuntimeError(f"POST /api/admin/fleet: {status} {str(answer)[:500]}")


# ---------------------------------------------------------------------------- measurements


def pg_settle(database_url: str) -> None:
    """Once the fleet is up: fresh planner statistics, and the boot's WAL checkpointed.

    ANALYZE is what autovacuum does on its own within a minute or so; this
    machine's PostgreSQL runs with autovacuum off, and placement plans read on
    statistics taken while every instance was still empty turn into nested loops
    over the fleet. The boot writes ~500 MB of WAL (two million inventory rows);
    left alone, the checkpoint it forces lands in the measured window, which is
    meant to show the steady state. No VACUUM: on this machine it makes the window
    slower, not faster (p99 1.8 s against 0.1 s, in stalls of several seconds).
    """
    if not database_url.startswith("postgresql"):
        return
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")


def pg_inventory_writes(database_url: str) -> int | None:
    """Rows inserted, updated or deleted in instance_deps so far (PostgreSQL statistics)."""
    if not database_url.startswith("postgresql"):
        return None
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        # Other backends flush their counters within ~1 s of going idle.
        time.sleep(1.5)
        row = conn.execute(
            "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
            "WHERE relname = 'instance_deps'").fetchone()
    return int(row[0]) if row else 0


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process, by pid."""
    seen: dict[int, float] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                seen[proc.pid] = t.user + t.system
    return seen


def busy_percent(before: Any, after: Any) -> float:
    """Of the machine's CPU time between two `psutil.cpu_times()`, the % not idle."""
    # Linux counts guest time inside user and nice already.
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields
             if name not in ("guest", "guest_nice")}
    total = sum(spent.values())
    idle = spent.get("idle", 0.0) + spent.get("iowait", 0.0)
    return 100 * (1 - idle / total) if total > 0 else 0.0


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots; backends that exited in between are not counted."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def window_warnings(logs: str, window_start: float, seconds: float) -> list[tuple[float, str]]:
    """The server's WARNING lines logged in the window, by second of the window."""
    found = []
    for line in logs.splitlines():
        if " WARNING " not in line:
            continue
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if 0 <= at - window_start < seconds:
            found.append((at - window_start, line[24:]))
    return found


# ---------------------------------------------------------------------------- job driver


class JobDriver:
    """Submits jobs at a steady rate, starts the ready ones and completes them."""

    def __init__(self, pool: Pool | None, admin_token: str, plan: Plan, rate: float,
                 t_measure: float, t_stop: float) -> None:
        self.pool: Pool = pool  # type: ignore[assignment]  # set inside the event loop
        self.plan, self.rate = plan, rate
        self.auth = b"Authorization: Bearer %s\r\n" % admin_token.encode()
        self.t_measure, self.t_stop = t_measure, t_stop
        self.latencies: list[float] = []
        self.errors = 0
        self.submitted = self.completed = 0
        self.rng = random.Random(1)
        dyn = plan.catalog - plan.static
        self.cum = [sum(1 / r for r in range(1, k + 2)) for k in range(dyn)]
        self.started: set[str] = set()

    def pick_deps(self) -> list[str]:
        k = self.rng.choice((1, 2, 3))
        idx = self.rng.choices(range(len(self.cum)), cum_weights=self.cum, k=k)
        return sorted({f"dep-{self.plan.static + i:05d}" for i in idx})

    async def submit(self, scheduled: float) -> None:
        body = json.dumps({"serverType": SERVER_TYPE, "depIds": self.pick_deps()}).encode()
        ok = False
        try:
            status, _ = await self.pool.request("POST", "/api/jobs", body, self.auth)
            ok = status < 300
        except HttpError:
            pass
        if self.t_measure <= scheduled < self.t_stop:
            if ok:
                self.latencies.append(time.time() - scheduled)
            else:
                self.errors += 1
        self.submitted += 1

    async def run_job(self, job_id: str) -> None:
        path = f"/api/jobs/{job_id}"
        with contextlib.suppress(HttpError):
            await self.pool.request("POST", path + "/start", b"{}", self.auth)
            await asyncio.sleep(self.plan.job_run)
            status, _ = await self.pool.request("POST", path + "/complete", b'{"ok": true}',
                                                self.auth)
            if status < 300:
                self.completed += 1

    async def run(self, t_start: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        # The scan for ready jobs runs beside the submits: awaited in this loop, a slow
        # scan would hold back the submits due meanwhile, and their latency (counted from
        # when they are due) would be the client's own wait.
        scanner = asyncio.ensure_future(self.scan_ready(t_start, tasks))
        # --job-rate 0 measures the agents alone: no submissions at all.
        next_submit = t_start if self.rate > 0 else float("inf")
        while time.time() < self.t_stop:
            if time.time() >= next_submit:
                tasks.add(asyncio.ensure_future(self.submit(next_submit)))
                next_submit += self.rng.expovariate(self.rate)
            tasks.difference_update([t for t in tasks if t.done()])
            await asyncio.sleep(max(0.0, min(next_submit, self.t_stop) - time.time()))
        scanner.cancel()
        for t in tasks:
            t.cancel()

    async def scan_ready(self, t_start: float, tasks: set[asyncio.Task[None]]) -> None:
        """Once a second, start (and later complete) the jobs that went ready."""
        await asyncio.sleep(max(0.0, t_start - time.time()))
        while time.time() < self.t_stop:
            next_scan = time.time() + 1.0
            with contextlib.suppress(HttpError, ValueError):
                status, body = await self.pool.request("GET", "/api/jobs?state=ready",
                                                       None, self.auth)
                if status == 200:
                    for job in json.loads(body).get("jobs", []):
                        job_id = job.get("jobId")
                        if job_id and job_id not in self.started:
                            self.started.add(job_id)
                            tasks.add(asyncio.ensure_future(self.run_job(job_id)))
            await asyncio.sleep(max(0.0, next_scan - time.time()))


# ---------------------------------------------------------------------------- one run


def start_py_spy(plan: Plan, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy over the measured window (all server processes, threads holding the GIL only:
    CPU, not waits), when --py-spy asks for it."""
    if plan.profile_dir is None:
        return None
    plan.profile_dir.mkdir(parents=True, exist_ok=True)
    out = plan.profile_dir / f"fleet-{name}.folded"
    print(f"  py-spy → {out}")
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses",
                             "--duration", str(int(plan.duration)), "--rate", "50",
                             "--nonblocking", "--gil", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for_boot(files: list[Path], t0: float, deadline: float) -> tuple[float, int]:
    """Until every worker reports its agents up: (seconds since t0, agents up)."""
    while time.time() < deadline and not all(f.exists() for f in files):
        await asyncio.sleep(0.2)
    reports = [f.read_text(encoding="utf-8").split() for f in files if f.exists()]
    last = max((float(r[0]) for r in reports), default=time.time())
    return last - t0, sum(int(r[1]) for r in reports)


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'fleet.db'}"
    else:
        from tests.support.server import postgres_database

        with postgres_database() as url:
            yield url


def run_one(plan: Plan, backend: str, n: int, server_workers: int,
            kind: str = "v1") -> Outcome:
    from tests.support.server import run_server

    out = Outcome(backend, n, server_workers, kind)
    api_process = plan.api_process and backend == "postgresql"
    out.api_process = api_process
    env = {"DEPMAN_LOG_LEVEL": "warning", "DEPMAN_HEARTBEAT_SECONDS": str(plan.heartbeat),
           "DEPMAN_WORKERS": str(server_workers), **plan.server_env}
    if api_process:
        env["DEPMAN_API_PORT"] = "0"
    with tempfile.TemporaryDirectory(prefix="depman-bench-fleet-") as tmp_name, \
            database(backend, Path(tmp_name)) as url, \
            run_server(url, extra_env=env, cwd=Path(tmp_name)) as server:
        t_setup = time.time()
        setup_fleet(server, plan, n)
        print(f"  [{backend} N={n} {kind}] fleet set up in {time.time() - t_setup:.1f} s")
        port = int(server.root_url.rsplit(":", 1)[1])
        workers = plan.workers or max(1, math.ceil(n / 5000))
        # Boot storms are not the steady state being measured: agents come up at most
        # `boot_rate` a second, and the window opens `warmup` seconds after the last
        # of them has registered and sent its first heartbeat (the boot is timed apart).
        ramp = max(plan.ramp, n / plan.boot_rate)
        t0 = time.time() + 1.0
        boot_cap = ramp + BOOT_TIMEOUT
        max_seconds = boot_cap + plan.warmup + plan.duration + 30
        window_file = Path(tmp_name) / "window"
        procs = []
        booted_files = []
        per = math.ceil(n / workers)
        for w in range(workers):
            first, count = w * per, min(per, n - w * per)
            if count <= 0:
                continue
            booted_files.append(Path(tmp_name) / f"booted-{w}")
            cmd = [sys.executable, "-m", "bench._fleet_worker", "--port", str(port),
                   "--secret", server.shared_secret, "--server-type", SERVER_TYPE,
                   "--first", str(first), "--count", str(count), "--t0", str(t0),
                   "--ramp", str(ramp), "--max-seconds", str(max_seconds),
                   "--booted-file", str(booted_files[-1]), "--window-file", str(window_file),
                   "--poll-seconds", str(plan.poll),
                   "--heartbeat-seconds", str(plan.heartbeat),
                   "--download-seconds", str(plan.download),
                   "--catalog", str(plan.catalog), "--static", str(plan.static),
                   "--inventory", str(plan.inventory),
                   "--connections", str(max(2, plan.connections // workers)),
                   "--agent-kind", kind, "--long-poll-seconds", str(plan.long_poll),
                   "--out", str(Path(tmp_name) / f"worker-{w}.json")]
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                          text=True))
        rate = plan.job_rate if plan.job_rate is not None else n / 1000
        driver = JobDriver(None, server.admin_token, plan, rate, 0.0, 0.0)
        with ProcessSampler(server.process.pid, interval=0.5) as sampler:

            async def drive() -> tuple[float, float, int | None]:
                api_port = port
                if api_process:
                    api_port = int(server.on_api_port().root_url.rsplit(":", 1)[1])
                driver.pool = Pool("127.0.0.1", api_port, 8)
                out.boot_seconds, out.booted = await wait_for_boot(booted_files, t0,
                                                                   t0 + boot_cap)
                print(f"  [{backend} N={n}] {out.booted:,} agents booted in "
                      f"{out.boot_seconds:.0f} s")
                await asyncio.to_thread(pg_settle, url)
                t_measure = time.time() + plan.warmup
                t_stop = t_measure + plan.duration
                out.window_start = t_measure
                write_atomic(window_file, f"{t_measure} {t_stop}\n")
                driver.t_measure, driver.t_stop = t_measure, t_stop
                job_task = asyncio.ensure_future(driver.run(time.time()))
                await asyncio.sleep(max(0.0, t_measure - time.time()))
                # As docs/monitoring/ advises: with the API's own process, Prometheus
                # scrapes that one, and the processes serving agents render nothing.
                scraper = ServerLatency("127.0.0.1", api_port)
                await scraper.start()
                sampler.mark()
                machine0 = psutil.cpu_times()
                spy = start_py_spy(plan, server.process.pid, f"{backend}-{server_workers}p-{n}")
                # In threads: the job driver shares this event loop, and a blocking read
                # here (the statistics wait 1.5 s) made the window's first submits late.
                pg0 = await asyncio.to_thread(postgres_cpu) if backend == "postgresql" else {}
                inv0 = await asyncio.to_thread(pg_inventory_writes, url)
                ctl0 = time.process_time()
                await asyncio.sleep(max(0.0, t_stop - time.time()))
                usage = sampler.usage()
                out.machine_busy = busy_percent(machine0, psutil.cpu_times())
                await scraper.stop()
                out.server_side = scraper.rows()
                out.stages = scraper.stages()
                out.long_pauses = scraper.long_pauses()
                if spy is not None:
                    await asyncio.to_thread(spy.wait, 120)
                out.server_cpu, out.server_rss = usage.cpu_percent, usage.rss_peak
                if backend == "postgresql":
                    out.pg_cpu = 100 * cpu_delta(pg0, postgres_cpu()) / usage.wall_seconds
                inv1 = pg_inventory_writes(url)
                ctl = time.process_time() - ctl0
                await job_task
                driver.pool.close()
                return ctl, usage.wall_seconds, (inv1 - inv0) if inv0 is not None and \
                    inv1 is not None else None

            try:
                ctl_cpu, wall, out.inv_writes = asyncio.run(drive())
            except BaseException:
                for proc in procs:  # no orphans waiting for a window that never comes
                    proc.kill()
                raise
        out.duration = wall
        sim_cpu = ctl_cpu
        for proc in procs:
            proc.communicate(timeout=max_seconds + 120)
            report = Path(tmp_name) / f"worker-{procs.index(proc)}.json"
            if proc.returncode != 0 or not report.exists():
                out.failure = f"worker exit {proc.returncode}"
                continue
            res = json.loads(report.read_text(encoding="utf-8"))
            for k, v in res["latencies"].items():
                out.latencies.setdefault(k, []).extend(v)
            out.slow.extend(t - out.window_start for t in res.get("slow", []))
            for second, count in res.get("per_second", {}).items():
                out.per_second[int(second)] = out.per_second.get(int(second), 0) + count
            for k, v in res["errors"].items():
                out.errors[k] = out.errors.get(k, 0) + v
            sim_cpu += res["cpu_seconds"]
            out.loop_lag = max(out.loop_lag, res["loop_lag_p99"])
            out.downloads_done += res["downloads_done"]
        out.server_warnings = window_warnings(server.logs(), out.window_start, wall)
        out.latencies["jobs"] = driver.latencies
        if driver.errors:
            out.errors["jobs"] = driver.errors
        out.jobs_submitted, out.jobs_completed = driver.submitted, driver.completed
        out.sim_cpu = 100 * sim_cpu / wall if wall else 0.0
    return out


# ---------------------------------------------------------------------------- report


def stage_view(stages: dict[str, dict[str, int]]) -> str:
    """'heartbeat 97 % memo (13,100 / 300 / 100), ...': the memos' share per endpoint."""
    parts = []
    for endpoint, by_stage in sorted(stages.items()):
        memo, quick, full = (by_stage.get(k, 0) for k in ("memo", "quick", "full"))
        total = memo + quick + full
        if total:
            parts.append(f"{endpoint} {100 * memo / total:.0f} % memo "
                         f"({memo:,} / {quick:,} / {full:,})")
    return ", ".join(parts)


def procs_label(o: Outcome) -> str:
    """The server processes of a run: agents' (--workers), plus the API's own when used."""
    return f"{o.server_workers} + API" if o.api_process else str(o.server_workers)


ENDPOINTS = ("queue", "long-poll", "heartbeat", "status", "register", "jobs")
QUEUE_ROUTE = "GET /api/dependencies/queue"
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def render(outcomes: list[Outcome]) -> list[ResultTable]:
    summary = ResultTable(
        f"Fleet load, simulated agents against one depman server (p99 target "
        f"{P99_TARGET * 1000:.0f} ms)",
        ["agents", "backend", "server procs", "N", "boot s", "req/s", "p50 ms", "p99 ms", "errors",
         "server CPU %", "server RSS MiB", "postgres CPU %", "simulator CPU %",
         "machine busy %", "inventory row writes", "jobs done", "worst second % ≥ 200 ms",
         "seconds > 1 %", "holds"])
    for o in outcomes:
        lat = o.all_latencies
        boot = f"{o.boot_seconds:.0f}" if o.booted == o.n else f"{o.booted:,} up"
        summary.add(o.kind, o.backend, procs_label(o), f"{o.n:,}", boot,
                    f"{o.requests / o.duration:.0f}" if o.duration else "—",
                    f"{percentile(lat, 50) * 1000:.1f}", f"{o.p99 * 1000:.1f}",
                    sum(o.errors.values()) if o.failure is None else o.failure,
                    f"{o.server_cpu:.0f}", f"{o.server_rss / MIB:.0f}",
                    "—" if o.pg_cpu is None else f"{o.pg_cpu:.0f}", f"{o.sim_cpu:.0f}",
                    "—" if o.machine_busy is None else f"{o.machine_busy:.0f}",
                    "—" if o.inv_writes is None
                    else f"{o.inv_writes:,} ({o.downloads_done:,} downloads)",
                    f"{o.jobs_completed}/{o.jobs_submitted}", f"{100 * o.worst_second():.1f}",
                    len(o.stalled_seconds()), "yes" if o.holds else "NO")
    per = ResultTable("Latency per endpoint (ms)",
                      ["agents", "backend", "server procs", "N", "endpoint", "requests", "req/s",
                       "p50", "p99", "max"])
    for o in outcomes:
        for ep in ENDPOINTS:
            lat = o.latencies.get(ep, [])
            if not lat:
                continue
            per.add(o.kind, o.backend, procs_label(o), f"{o.n:,}", ep, len(lat),
                    f"{len(lat) / o.duration:.1f}",
                    f"{percentile(lat, 50) * 1000:.1f}", f"{percentile(lat, 99) * 1000:.1f}",
                    f"{max(lat) * 1000:.1f}")
    server = ResultTable("Server-side latency (ms), the server's /metrics histogram "
                         "(all its processes)",
                         ["agents", "backend", "server procs", "N", "route", "requests", "p50",
                          "p99"])
    for o in outcomes:
        for route, count, p50, p99 in o.server_side:
            if count >= 10:
                if o.kind == "depman" and route.startswith(QUEUE_ROUTE):
                    # Each long-poll is held open up to the wait it asked for: this is
                    # the hold, not how late the answer was (the table above has that).
                    route += " (long-poll hold, not latency)"
                server.add(o.kind, o.backend, procs_label(o), f"{o.n:,}", route, count,
                           f"{p50 * 1000:.1f}", f"{p99 * 1000:.1f}")
    stalls = ResultTable("Stalled seconds: more than 1 % of the agent requests due in the "
                         "second took ≥ 200 ms",
                         ["agents", "backend", "server procs", "N", "second of window",
                          "requests", "≥ 200 ms", "%"])
    for o in outcomes:
        for second, count, slow in o.stalled_seconds():
            stalls.add(o.kind, o.backend, procs_label(o), f"{o.n:,}", second, count, slow,
                       f"{100 * slow / max(1, count):.1f}")
    return [summary, per, server, *([stalls] if stalls.rows else [])]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="Comma-separated N values (default 1000,5000,10000).")
    parser.add_argument("--backends", help="sqlite,postgresql (default both).")
    parser.add_argument("--agents", help="v1,depman: which agents to simulate (default both): "
                        "field v1 agents, or depman's own request pattern.")
    parser.add_argument("--duration", type=float, help="Measured seconds per run.")
    parser.add_argument("--workers", type=int, help="Simulator processes (default N/5000).")
    parser.add_argument("--job-rate", type=float, help="Jobs per second (default N/1000).")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="A server setting for every run, e.g. DEPMAN_WORKER_THREADS=16.")
    parser.add_argument("--server-workers",
                        help="Comma-separated `depman server --workers` values for the "
                        "PostgreSQL runs (default 1,2; smoke 1).")
    parser.add_argument("--api-process", action="store_true",
                        help="PostgreSQL: start the server with --api-port and send the job "
                        "driver there (a process of its own for the job API).")
    parser.add_argument("--boot-rate", type=float,
                        help=f"Agents starting per second during the ramp (default "
                        f"{REGISTER_RATE:g}). The boot is timed apart from the measured "
                        "window, whose load is the same at any boot rate.")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="Record py-spy samples of the server's threads holding the GIL "
                        "(where its Python CPU goes) over each measured window into DIR "
                        "(fleet-<backend>-<procs>p-<N>.folded: collapsed stacks, for "
                        "speedscope.app or flamegraph.pl).")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    plan.profile_dir = args.py_spy
    plan.api_process = args.api_process
    if args.sizes:
        plan.sizes = [int(s) for s in args.sizes.split(",")]
    if args.backends:
        plan.backends = args.backends.split(",")
    if args.agents:
        plan.agent_kinds = args.agents.split(",")
        if not set(plan.agent_kinds) <= {"v1", "depman"}:
            parser.error(f"--agents wants v1 and/or depman, got {args.agents!r}")
    if args.duration:
        plan.duration = args.duration
    if args.boot_rate is not None:
        if args.boot_rate <= 0:
            parser.error(f"--boot-rate wants agents per second above 0, got {args.boot_rate:g}")
        plan.boot_rate = args.boot_rate
    if args.workers:
        plan.workers = args.workers
    if args.job_rate is not None:
        plan.job_rate = args.job_rate
    if args.server_workers:
        plan.server_workers = [int(w) for w in args.server_workers.split(",")]
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("DEPMAN_"):
            parser.error(f"--server-env wants DEPMAN_NAME=VALUE, got {item!r}")
        plan.server_env[name] = value
    outcomes = []
    for kind in plan.agent_kinds:
        for backend in plan.backends:
            for procs in plan.server_workers if backend == "postgresql" else [1]:
                for n in plan.sizes:
                    print(f"running {kind} agents, {backend} N={n} server processes={procs} ...")
                    try:
                        outcomes.append(run_one(plan, backend, n, procs, kind))
                    except Exception as exc:  # report the failure in the table, go on
                        outcomes.append(Outcome(backend, n, procs, kind,
                                                failure=f"{type(exc).__name__}: {exc}"[:200]))
                        print(f"  failed: {exc}", file=sys.stderr)
    tables = render(outcomes)
    for t in tables:
        t.print()
    notes = []
    for kind, backend, procs in dict.fromkeys((o.kind, o.backend, o.server_workers)
                                              for o in outcomes):
        ok = [o.n for o in outcomes if o.kind == kind and o.backend == backend
              and o.server_workers == procs and o.holds]
        what = f"{kind} agents, {backend}, {procs} server process{'es' if procs > 1 else ''}"
        notes.append(f"{what}: largest N tested with p99 < {P99_TARGET * 1000:.0f} ms and no "
                     f"errors: {max(ok):,}" if ok else f"{what}: no N tested holds the target")
    for o in outcomes:
        if o.stages:
            notes.append(f"{o.kind} agents, {o.backend}, N={o.n:,}: agent requests answered "
                         f"by the memo / quick / full stage: {stage_view(o.stages)}")
            pauses = ", ".join(f"{kind} {count}" for kind, count in sorted(o.long_pauses.items()))
            notes.append(f"{o.kind} agents, {o.backend}, N={o.n:,}: server pauses over 100 ms "
                         f"in the window (all processes): {pauses or 'none'}")
    notes.append(f"Measured {plan.duration:.0f} s per run, from {plan.warmup:.0f} s after every "
                 f"agent was up (registered and sent its first heartbeat); agents start "
                 f"over max({plan.ramp:.0f} s, N / {plan.boot_rate:g} s), and 'boot s' is the "
                 f"first start to the last agent up. Poll {plan.poll:g} s, heartbeat "
                 f"{plan.heartbeat:g} s, {plan.inventory} deps per inventory. Inventory row "
                 "writes (PostgreSQL statistics) should equal the downloads finished in the "
                 "window (each adds one row; a touch of a dep already held adds none), not "
                 "heartbeats x deps. depman agents long-poll "
                 f"({plan.long_poll:g} s idle, at least 15 s; 1 s while downloading); a "
                 "long-poll's latency is how late its answer came past the hold it asked for; "
                 "the server-side GET /api/dependencies/queue figures of depman agents are "
                 "the hold itself, not latency. 'machine busy %' is the share of all cores "
                 "busy over the window, every process and the kernel counted: near 100 %, "
                 "requests wait for a core and a short burst of work leaves a backlog that "
                 "takes seconds to drain.")
    for o in outcomes:
        if o.slow:
            view = " ".join(f"{s}:{count}/{slow}" for s, count, slow in o.seconds_view())
            print(f"{o.kind} {o.backend} {o.server_workers}p N={o.n:,}: per second of the "
                  f"window, agent requests / those >= 200 ms: {view}")
    for o in outcomes:
        for at, line in o.server_warnings:
            print(f"  server, second {at:5.1f} of the window: {line}")
    for n in notes:
        print(n)
    if should_record(args):
        given = sys.argv[1:] if argv is None else argv
        cmd = " ".join(["uv run python -m bench.fleet", *given])
        # One section per agent kind and backend: each is its own benchmark in RESULTS.md.
        for kind, backend in dict.fromkeys((o.kind, o.backend) for o in outcomes):
            group = [o for o in outcomes if o.kind == kind and o.backend == backend]
            own = [n for n in notes[:-1] if n.startswith(f"{kind} agents, {backend},")]
            record_results(f"Fleet load, {kind} agents, {BACKEND_NAMES.get(backend, backend)}",
                           cmd, render(group), [*own, notes[-1]], args.results, history="fleet")
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
