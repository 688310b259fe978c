"""`depman demo`: start a whole fleet on this machine, run jobs through it, summarise, clean up.

Order: model origin, control plane (SQLite in the work folder), demo fleet
applied through the admin API, two agents, then the jobs. Every child is
stopped in `finally` (SIGTERM, grace, SIGKILL) and the temp folder removed
unless `--workdir` was given.

Knobs (env): DEPMAN_DEMO_SCALE (file sizes, default 1.0), DEPMAN_DEMO_TIMEOUT
(seconds before unfinished jobs count as failed, default 120),
DEPMAN_DEMO_RUN_SECONDS (how long each job "renders", default 1.0).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from depman.client.api import AdminClient
from depman.client.errors import ClientError
from depman.demo import fleet as demo_fleet
from depman.demo.display import Frame, render
from depman.demo.jobs import JobPlayer
from depman.demo.launch import (
    DEMO_HEARTBEAT_SECONDS,
    AgentSpec,
    Service,
    server_env,
    spawn_server,
    start_agent,
    start_origin,
    wait_listening,
)
from depman.demo.monitor import FleetMonitor
from depman.demo.processes import ChildProcess, ProcessFailed
from depman.demo.summary import Summary, build_summary, print_summary

LIVE_WAIT_SECONDS = 30.0
# A cache over its cap when the last job ends holds deps used within the pin window; the
# agents evict them at a heartbeat once it has passed.
SETTLE_SECONDS = demo_fleet.PIN_TTL_SECONDS + 4 * DEMO_HEARTBEAT_SECONDS
FRAME_SECONDS = 0.25
TITLE = "depman demo"
NON_TTY_WIDTH = 120


@dataclass(frozen=True)
class DemoOptions:
    """How big and how patient the demo is."""

    scale: float = 1.0
    timeout_seconds: float = 120.0
    run_seconds: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DemoOptions:
        return cls(
            scale=float(env.get("DEPMAN_DEMO_SCALE") or 1.0),
            timeout_seconds=float(env.get("DEPMAN_DEMO_TIMEOUT") or 120.0),
            run_seconds=float(env.get("DEPMAN_DEMO_RUN_SECONDS") or 1.0),
        )


class _Terminated(Exception):
    """SIGTERM arrived: unwind through the `finally` blocks."""


def run_demo(*, keep_running: bool = False, workdir: Path | None = None) -> int:
    """Run the demo; 0 when every job completed."""
    # Without a terminal Rich assumes 80 columns; the tables want more.
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    console = Console(width=None if wide else NON_TTY_WIDTH)
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="depman-demo-")) if workdir is None else workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, DemoOptions.from_env(os.environ), console)
    try:
        with _sigterm_unwinds():
            code = demo.run(keep_running=keep_running)
        if code and owned:
            console.print("not every job completed; run with --workdir DIR to keep the logs")
        return code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the fleet[/]")
        return 130
    except _Terminated:
        return 143
    except (ProcessFailed, ClientError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}", highlight=False)
        demo.print_log_tails()
        return 1
    finally:
        demo.shutdown()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"files and logs kept in {root}", highlight=False)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Demo:
    """One demo run: its processes, its API client, its live view."""

    def __init__(self, root: Path, options: DemoOptions, console: Console) -> None:
        self.root = root
        self.options = options
        self.console = console
        self.logs = root / "logs"
        self.admin_token = "demo-admin-" + secrets.token_hex(8)
        self.shared_secret = "demo-secret-" + secrets.token_hex(8)
        self.hf_token = "hf_demo" + secrets.token_hex(8)
        self.processes: list[ChildProcess] = []
        self.api: AdminClient | None = None
        self.monitor: FleetMonitor | None = None
        self.player: JobPlayer | None = None
        self.phase = "starting"
        self.started_at = time.monotonic()
        self.last_logged_at = self.started_at
        self.dep_sizes: dict[str, int] = {}
        self.hits: dict[str, int] = {}

    # Run ----------------------------------------------------------------------

    def run(self, *, keep_running: bool) -> int:
        interactive = self.console.is_terminal
        live = Live(render(self._frame()), console=self.console, auto_refresh=False)
        with contextlib.ExitStack() as stack:
            if interactive:
                stack.enter_context(live)
            origin, server = self._start_services(live)
            self._start_agents(live, server)
            self._play_jobs(live)
        if not interactive:
            self.console.print(render(self._frame()))
        summary = self._summary(origin)
        print_summary(self.console, summary)
        if keep_running:
            self._stay_up(server)
        return 0 if summary.ok else 1

    def _start_services(self, live: Live) -> tuple[Service, Service]:
        # The control plane takes seconds to import: spawn it first, start the origin and
        # hash the generated files while it comes up.
        self._set_phase(live, "starting the control plane (SQLite) and the model origin")
        env = server_env(
            database_url=f"sqlite:///{self.root / 'depman.db'}",
            admin_token=self.admin_token,
            shared_secret=self.shared_secret,
        )
        server_proc = spawn_server(self.logs, env, cwd=self.root)
        self.processes.append(server_proc)
        origin = start_origin(self.logs, self.hf_token)
        self.processes.append(origin.process)
        with ThreadPoolExecutor(max_workers=1) as pool:
            files_future = pool.submit(demo_fleet.build_files, origin.url, self.options.scale)
            server = wait_listening(server_proc)
            self._set_phase(live, "hashing the generated model files")
            files = files_future.result()
        self.dep_sizes = {f.spec.dep_id: f.size for f in files}
        fleet = demo_fleet.fleet_document(files)
        fleet_path = self.root / "fleet.yaml"
        fleet_path.write_text(demo_fleet.fleet_yaml(fleet), encoding="utf-8")
        self._set_phase(live, f"applying {fleet_path.name}")
        self.api = AdminClient(server.url, self.admin_token)
        self.api.apply_fleet(fleet)
        self._say(
            f"control plane {server.url}, origin {origin.url}, "
            f"{len(files)} deps ({_mib(sum(self.dep_sizes.values()))} MiB)"
        )
        return origin, server

    def _start_agents(self, live: Live, server: Service) -> None:
        assert self.api is not None
        self._set_phase(live, "starting two agents")
        self.monitor = FleetMonitor(self.api, list(demo_fleet.INSTANCE_IDS))
        self.monitor.start()
        agents = []
        for instance_id in demo_fleet.INSTANCE_IDS:
            spec = AgentSpec(
                instance_id=instance_id,
                server_type=demo_fleet.SERVER_TYPE,
                api_base_url=server.url + "/api",
                shared_secret=self.shared_secret,
                workspace=self.root / "instances" / instance_id,
                hf_token=self.hf_token,
            )
            agent = start_agent(spec, self.logs, wait_registered=False)
            self.processes.append(agent)
            agents.append(agent)
        deadline = time.monotonic() + LIVE_WAIT_SECONDS
        while not self._all_live():
            self._refresh(live)
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"the agents did not send a heartbeat within {LIVE_WAIT_SECONDS:.0f}s"
                )
            for agent in agents:
                if not agent.running():
                    raise ProcessFailed(f"{agent.name} exited:\n{agent.tail()}")
            time.sleep(FRAME_SECONDS)

    def _all_live(self) -> bool:
        assert self.monitor is not None
        views = self.monitor.snapshot()
        return all(
            iid in views and views[iid].heartbeat_at for iid in demo_fleet.INSTANCE_IDS
        )

    def _play_jobs(self, live: Live) -> None:
        assert self.api is not None
        self._set_phase(live, "submitting jobs")
        self.player = JobPlayer(self.api, demo_fleet.SERVER_TYPE, self.options.run_seconds)
        for job in demo_fleet.JOBS:
            record = self.player.submit(job.label, job.dep_ids, job_id=f"demo-{job.label}")
            self._say(f"submitted {record.job_id}: {', '.join(job.dep_ids)} -> {record.state}"
                      + (f" on {record.instance_id}" if record.instance_id else ""))
            self._refresh(live)
        self._set_phase(live, "running jobs")
        deadline = time.monotonic() + self.options.timeout_seconds
        seen_states: dict[str, str] = {}
        while not self.player.all_done():
            if time.monotonic() > deadline:
                self._say(f"timeout: jobs unfinished after {self.options.timeout_seconds:.0f}s")
                break
            self._refresh(live)
            self._note_jobs(seen_states)
            time.sleep(FRAME_SECONDS)
        self._note_jobs(seen_states)
        self.player.stop()
        self._settle_caches(live)
        self.monitor_stop()
        self._set_phase(live, "done")

    def _settle_caches(self, live: Live) -> None:
        """Wait (briefly) until every dynamic cache is back within its cap."""
        monitor = self.monitor
        assert monitor is not None
        cap = demo_fleet.MAX_DYNAMIC_BYTES

        def over() -> list[str]:
            return sorted(i for i, v in monitor.snapshot().items() if v.dynamic_bytes > cap)

        if not over():
            return
        self._set_phase(live, f"caches over the cap ({', '.join(over())}): waiting for the "
                              "pin window to pass")
        deadline = time.monotonic() + SETTLE_SECONDS
        while over() and time.monotonic() < deadline:
            self._refresh(live)
            time.sleep(FRAME_SECONDS)
        if over():
            self._say(f"still over the cap after {SETTLE_SECONDS:.0f}s: {', '.join(over())}")

    def _note_jobs(self, seen: dict[str, str]) -> None:
        """Log job state changes; count a placed job's cache hits once."""
        assert self.player is not None and self.monitor is not None
        with self.player.lock:
            changed = any(seen.get(r.label) != r.state for r in self.player.records)
        if changed:
            # A job goes ready once its files are on the instance: take in those
            # installs first, so the log shows them before the job.
            self.monitor.poll_once()
        views = self.monitor.snapshot()
        with self.player.lock:
            records = list(self.player.records)
            for r in records:
                if r.label not in self.hits:
                    hits = _placement_hits(r.dep_ids, r.last_doc)
                    if hits is None and r.instance_id and r.instance_id in views:
                        # No placement record: what the instance held when we saw the job there.
                        hits = len(set(r.dep_ids) & views[r.instance_id].installed)
                    if hits is not None:
                        self.hits[r.label] = hits
                if seen.get(r.label) != r.state:
                    seen[r.label] = r.state
                    where = f" on {r.instance_id}" if r.instance_id else ""
                    extra = f": {r.error}" if r.state == "failed" and r.error else ""
                    self._say(f"job {r.job_id} {r.state}{where}{extra}")

    # Output -------------------------------------------------------------------

    def _frame(self) -> Frame:
        views = self.monitor.snapshot() if self.monitor else {}
        events = list(self.monitor.events) if self.monitor else []
        if self.player:
            with self.player.lock:
                jobs = list(self.player.records)
        else:
            jobs = []
        return Frame(
            title=TITLE,
            phase=self.phase,
            started_at=self.started_at,
            instances=views,
            jobs=jobs,
            events=events,
            dynamic_cap=demo_fleet.MAX_DYNAMIC_BYTES,
            dep_sizes=self.dep_sizes,
        )

    def _refresh(self, live: Live) -> None:
        if self.console.is_terminal:
            live.update(render(self._frame()), refresh=True)
        else:
            self._print_events()

    def _set_phase(self, live: Live, phase: str) -> None:
        self.phase = phase
        if self.console.is_terminal:
            live.update(render(self._frame()), refresh=True)
        else:
            self._say(phase)

    def _say(self, text: str) -> None:
        """A log line (only when there is no live view to show it), after the fleet
        events seen before it, so the log reads in time order."""
        if self.console.is_terminal:
            return
        self._print_events()
        self._print_line(time.monotonic(), text)

    def _print_events(self) -> None:
        if self.monitor is not None:
            for event in self.monitor.take_new_events():
                self._print_line(event.at, event.describe())

    def _print_line(self, at: float, text: str) -> None:
        # An event is stamped when the monitor saw it, which can be a moment before a
        # line already printed: the log never goes back in time.
        self.last_logged_at = max(at, self.last_logged_at)
        elapsed = self.last_logged_at - self.started_at
        self.console.print(
            f"[{elapsed:5.1f}s] {text}", markup=False, highlight=False, soft_wrap=True
        )

    def _summary(self, origin: Service) -> Summary:
        assert self.player is not None and self.monitor is not None
        try:
            stats = httpx.get(origin.url + "/_stats", timeout=5).json()
            served: int | None = int(stats["bytesServed"])
        except (httpx.HTTPError, ValueError, KeyError):
            served = None
        with self.player.lock:
            records = list(self.player.records)
        return build_summary(
            records,
            self.hits,
            bytes_downloaded=served,
            evictions=self.monitor.totals.evictions,
            installs=self.monitor.totals.installs,
            wall_seconds=time.monotonic() - self.started_at,
        )

    def _stay_up(self, server: Service) -> None:
        assert self.monitor is not None
        self.console.print(
            f"\nDashboard: {server.url}/  (log in with the admin token {self.admin_token})\n"
            f"API: {server.url}/api  Files: {self.root}\nPress Ctrl-C to stop.",
            highlight=False,
        )
        try:
            while all(p.running() for p in self.processes):
                time.sleep(1)
            self.console.print("[red]a demo process exited; stopping[/]")
        except KeyboardInterrupt:  # the documented way to stop: not a failure
            self.console.print("stopping the fleet")

    def print_log_tails(self) -> None:
        """The last lines of every child, after a failure."""
        for proc in self.processes:
            self.console.rule(f"{proc.name} (last lines)")
            self.console.print(proc.tail(25), markup=False, highlight=False)

    # Teardown -----------------------------------------------------------------

    def monitor_stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor.poll_once()

    def shutdown(self) -> None:
        """Stop the job threads, the monitor, then every child (agents first)."""
        if self.player is not None:
            self.player.stop()
        if self.monitor is not None:
            self.monitor.stop()
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.api is not None:
            self.api.close()


def _placement_hits(dep_ids: Sequence[str], doc: Mapping[str, Any]) -> int | None:
    """Deps the instance already held when the job was first placed (its history says)."""
    for entry in doc.get("history") or []:
        if entry.get("event") == "placed" and isinstance(entry.get("missingDepIds"), list):
            return len(set(dep_ids) - set(entry["missingDepIds"]))
    return None


def _mib(count: int) -> int:
    return count // (1024 * 1024)
