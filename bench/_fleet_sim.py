"""The fleet simulator: the v1 agent, the stats it keeps, and the loop that runs a slice of agents.

`Agent` plays a field agent; `bench/_fleet_depman.py` derives depman's own agent
from it. Each agent registers, heartbeats its ~200-dep inventory every 30 s,
polls its queue every 5 s (±20%), and works the items it gets (`running`, then
`succeeded` after a simulated download, then an early heartbeat).

Handshake with `bench.fleet`: once every agent of this process has registered and
sent its first heartbeat, the process writes `--booted-file` (the time); the
measured window comes back in `--window-file` ("t_measure t_stop"), so the window
opens after the boot storm however long the server took to absorb it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.fleetclient import HttpError, Pool

AGENT_VERSION = "bench-v1-agent/1.0"
STOP_GRACE_SECONDS = 5.0
SLOW_SECONDS = 0.2  # a request this late is listed with its due time (when were the stalls?)
DISK = {"totalBytes": 500 * 1024**3, "freeBytes": 200 * 1024**3, "usedBytes": 300 * 1024**3}


def inventory(index: int, catalog: int, static: int, size: int) -> list[str]:
    """The dynamic deps instance `index` holds at start (deterministic)."""
    rng = random.Random(index)
    return sorted(f"dep-{i:05d}" for i in rng.sample(range(static, catalog), size - static))


@dataclass
class Stats:
    t_start: float
    t_end: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Downloads finished inside the window: each adds one inventory row. Touches
    # (a job's dep already held) add none, so they are not counted.
    downloads_done: int = 0
    slow: list[float] = field(default_factory=list)  # when each slow request was due
    # Agent requests per second of the window (by due time): the per-second view.
    per_second: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, endpoint: str, scheduled: float, ok: bool) -> None:
        if self.t_start <= scheduled < self.t_end:
            if ok:
                self.measured(endpoint, scheduled, time.time() - scheduled)
            else:
                self.errors[endpoint] += 1

    def measured(self, endpoint: str, scheduled: float, latency: float) -> None:
        """A request of the window that succeeded, `latency` seconds late."""
        self.latencies[endpoint].append(latency)
        self.per_second[int(scheduled - self.t_start)] += 1
        if latency >= SLOW_SECONDS:
            self.slow.append(scheduled)


class Agent:
    """One v1 agent, as the field agent behaves (no long-poll, no extensions)."""

    def __init__(self, sim: Sim, index: int) -> None:
        self.sim = sim
        self.instance_id = f"inst-{index:05d}"
        self.static = [f"dep-{i:05d}" for i in range(sim.args.static)]
        self.dynamic = inventory(index, sim.args.catalog, sim.args.static, sim.args.inventory)
        self.downloading: set[str] = set()
        self.auth = b""
        self.register_answer: dict[str, Any] = {}
        self.hb_body: bytes | None = None
        self.poll_path = f"/api/dependencies/queue?instanceId={self.instance_id}&limit=25"
        self.handled: set[str] = set()
        self.early_hb = 0.0
        self.last_hb = 0.0
        # Set while the agent sleeps: a finished download resolves it to wake the agent.
        self.wake: asyncio.Future[bool] | None = None

    async def call(self, endpoint: str, method: str, path: str, body: object | None,
                   scheduled: float, headers: bytes | None = None) -> tuple[int, bytes] | None:
        raw = None if body is None else (body if isinstance(body, bytes) else
                                         json.dumps(body).encode())
        try:
            status, answer = await self.sim.pool.request(
                method, path, raw, self.auth if headers is None else headers)
        except HttpError:
            self.sim.stats.record(endpoint, scheduled, False)
            return None
        self.sim.stats.record(endpoint, scheduled, 200 <= status < 300)
        if status in (401, 403) and endpoint != "register":
            self.auth = b""
        return status, answer

    async def register(self) -> bool:
        body = {"serverType": self.sim.args.server_type, "agentVersion": AGENT_VERSION,
                "instanceId": self.instance_id}
        hdr = b"X-DM-Secret: %s\r\n" % self.sim.args.secret.encode()
        got = await self.call("register", "POST", "/api/dependencies/register", body,
                              time.time(), hdr)
        if not got or got[0] != 200:
            return False
        self.register_answer = json.loads(got[1])
        self.auth = b"Authorization: Bearer %s\r\n" % self.register_answer["agentToken"].encode()
        return True

    def heartbeat_body(self) -> bytes:
        if self.hb_body is None:
            self.hb_body = json.dumps({
                "instanceId": self.instance_id,
                "installedStaticDepIds": self.static,
                "installedDynamicDepIds": self.dynamic,
                "downloadingDepIds": sorted(self.downloading),
                "failedDepIds": [], "diskStats": DISK,
                "dynamicBytesUsed": 150 * 1024**3, "queueDepth": len(self.downloading),
            }).encode()
        return self.hb_body

    async def heartbeat(self, scheduled: float) -> None:
        self.last_hb = time.time()
        self.early_hb = 0.0
        await self.call("heartbeat", "POST", "/api/dependencies/heartbeat",
                        self.heartbeat_body(), scheduled)

    async def poll(self, scheduled: float) -> None:
        got = await self.call("queue", "GET", self.poll_path, None, scheduled)
        if not got or got[0] != 200 or b'"itemId"' not in got[1]:
            return
        for item in json.loads(got[1]).get("items", [])[:4]:
            if item["itemId"] not in self.handled:
                self.handled.add(item["itemId"])
                self.sim.spawn(self.work(item))

    async def work(self, item: dict[str, object]) -> None:
        dep_id = str(item["depId"])
        status = {"instanceId": self.instance_id, "itemId": item["itemId"], "depId": dep_id,
                  "op": item["op"], "diskStats": DISK, "dynamicBytesUsed": 150 * 1024**3}
        await self.call("status", "POST", "/api/dependencies/status",
                        {**status, "state": "running"}, time.time())
        if item["op"] == "download":
            self.downloading.add(dep_id)
            self.hb_body = None
            await asyncio.sleep(self.sim.args.download_seconds)
            self.downloading.discard(dep_id)
            resolved = item.get("resolved") or {}
            kind = resolved.get("kind") if isinstance(resolved, dict) else None
            target = self.static if kind == "static" else self.dynamic
            if dep_id not in target:
                target.append(dep_id)
            self.hb_body = None
        await self.call("status", "POST", "/api/dependencies/status",
                        {**status, "state": "succeeded"}, time.time())
        stats = self.sim.stats
        if item["op"] == "download" and stats.t_start <= time.time() < stats.t_end:
            stats.downloads_done += 1
        # The field agent heartbeats early (at most every 2 s) after a download.
        self.early_hb = max(time.time(), self.last_hb + 2.0)
        resolve_waiter(self.wake)

    async def run(self, start: float) -> None:
        args = self.sim.args
        await sleep_until(start)
        while not await self.register():
            if time.time() > self.sim.t_stop:
                return
            await asyncio.sleep(5)
        await self.heartbeat(time.time())
        self.sim.booted += 1
        now = time.time()
        next_poll = now + random.uniform(0, args.poll_seconds)
        next_hb = now + args.heartbeat_seconds
        while True:
            due = min(next_poll, next_hb, self.early_hb or next_hb)
            if due >= self.sim.t_stop:
                return
            # A finished download sets an early heartbeat while this sleeps: wake for it,
            # or its latency (counted from when it was due) would include the sleep.
            # (A future and a timer: asyncio.wait_for costs a task per sleep, and ten
            # thousand agents sleeping that way took a third of the simulator's CPU.)
            delay = due - time.time()
            if delay > 0:
                loop = asyncio.get_running_loop()
                self.wake = loop.create_future()
                timer = loop.call_later(delay, resolve_waiter, self.wake, False)
                try:
                    woken = await self.wake
                finally:
                    timer.cancel()
                    self.wake = None
                if woken:
                    continue  # due times changed
            if not self.auth:
                await self.register()
            if due in (next_hb, self.early_hb):
                if due == next_hb:
                    next_hb += args.heartbeat_seconds
                await self.heartbeat(due)
            else:
                next_poll = due + args.poll_seconds * random.uniform(0.8, 1.2)
                await self.poll(due)


def resolve_waiter(waiter: asyncio.Future[bool] | None, woken: bool = True) -> None:
    """Wake a sleeping agent (``woken``) or end its sleep on time (not ``woken``)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(woken)


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a file the other process reads whole or not at all."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


async def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


class Sim:
    """A slice of the fleet's agents, all of one class, sharing one connection pool."""

    def __init__(self, args: argparse.Namespace, agent_class: type[Agent] = Agent) -> None:
        self.args = args
        self.agent_class = agent_class
        # Until the window is known: nothing is recorded, agents run up to the cap.
        self.t_measure = float("inf")
        self.t_stop = args.t0 + args.max_seconds
        self.stats = Stats(self.t_measure, self.t_stop)
        self.pool = Pool(args.host, args.port, args.connections)
        self.tasks: set[asyncio.Task[None]] = set()
        self.booted = 0

    async def handshake(self) -> None:
        """Report the end of the boot, then take the window from the bench."""
        args = self.args
        while self.booted < args.count and time.time() < self.t_stop:
            await asyncio.sleep(0.2)
        write_atomic(args.booted_file, f"{time.time()} {self.booted}\n")
        while time.time() < self.t_stop:
            try:
                with open(args.window_file, encoding="utf-8") as fh:
                    first, last = (float(x) for x in fh.read().split())
            except (OSError, ValueError):
                await asyncio.sleep(0.2)
                continue
            self.t_measure, self.t_stop = first, min(last, self.t_stop)
            self.stats.t_start, self.stats.t_end = self.t_measure, self.t_stop
            return

    def spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def main(self) -> dict[str, object]:
        args = self.args
        agents = [self.agent_class(self, i) for i in range(args.first, args.first + args.count)]
        rng = random.Random(args.first)
        runs = [asyncio.ensure_future(a.run(args.t0 + rng.uniform(0, args.ramp)))
                for a in agents]
        await self.handshake()
        self.t_measure = min(self.t_measure, self.t_stop)  # no window came: report nothing
        await sleep_until(self.t_measure)
        cpu0 = time.process_time()
        lag_samples: list[float] = []
        while time.time() < self.t_stop:
            t = time.perf_counter()
            await asyncio.sleep(0.1)
            lag_samples.append(time.perf_counter() - t - 0.1)
        cpu = time.process_time() - cpu0
        # Requests still queued after the window are not measured: give stragglers a few
        # seconds, then drop them, so an overloaded server cannot hang the report.
        _done, pending = await asyncio.wait(runs, timeout=STOP_GRACE_SECONDS)
        for task in [*pending, *self.tasks]:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.pool.close()
        lag_samples.sort()
        return {
            "latencies": {k: [round(v, 6) for v in vs] for k, vs in self.stats.latencies.items()},
            "slow": [round(t, 3) for t in self.stats.slow],
            "per_second": dict(self.stats.per_second),
            "errors": dict(self.stats.errors),
            "cpu_seconds": cpu,
            "downloads_done": self.stats.downloads_done,
            "loop_lag_p99": lag_samples[int(len(lag_samples) * 0.99)] if lag_samples else 0.0,
        }
