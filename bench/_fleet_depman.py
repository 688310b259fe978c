"""Simulated agents that follow depman's own agent request pattern (`bench.fleet --agents depman`).

The v1 agents of `_fleet_sim` poll every 5 s; depman's agent does not, and the
fleet bench never saw what it does instead (an idle agent once sent thousands of
requests a minute). This one copies `depman.agent.loop` and `depman.agent.pacing`:

- long-poll: an idle agent holds each queue request for `--long-poll-seconds`
  (at least 15 s; the server caps it at 30), cut short only by a heartbeat due
  within 15 s (sent first, early); with a download running and a slot free it
  asks with a 1 s hold; an empty answer that came back early is not repeated
  before the hold it asked for has passed;
- heartbeats every `--heartbeat-seconds` idle, every 5 s while downloading
  (progress: `activeDownloads` rows), and early (at most every 2 s) after a
  download finishes;
- one download at a time (`MAX_PARALLEL_DOWNLOADS=1`), `running` then `succeeded`.

Each agent long-polls on its own connection, as real agents do (a reverse proxy
holds one upstream connection per waiting request); heartbeats and statuses use
the shared pool. A long-poll's latency is how late its answer came: the time past
the hold it asked for (0 when an item ended it early).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING

from bench._fleet_sim import Agent, resolve_waiter
from bench.fleetclient import HttpError, Pool

if TYPE_CHECKING:
    from bench._fleet_sim import Sim

AGENT_VERSION = "depman-agent/0.1.0 (bench)"
IDLE_LONG_POLL_MIN_SECONDS = 15
BUSY_LONG_POLL_SECONDS = 1
PROGRESS_SECONDS = 5.0
EARLY_HEARTBEAT_MIN_SECONDS = 2.0
MAX_PARALLEL = 1


class DepmanAgent(Agent):
    def __init__(self, sim: Sim, index: int) -> None:
        super().__init__(sim, index)
        self.long_poll = False
        self.queue_conn = Pool(sim.args.host, sim.args.port, 1, timeout=60.0)
        self.started_ms: dict[str, int] = {}
        # When the heartbeat interval last shortened (a download started): a progress
        # heartbeat is due from then, not from last_hb + 5 s, which may lie in the past
        # (the agent sends it at once; counting from the past would be simulator lateness).
        self.busy_since = 0.0
        # A heartbeat that fell due during the agent's own long-poll goes when the poll
        # ends (the agent is sequential, as depman's is): its latency counts from then.
        self.free_at = 0.0

    async def register(self) -> bool:
        if not await super().register():
            return False
        caps = self.register_answer.get("capabilities") or {}
        self.long_poll = bool(caps.get("longPoll")) and self.sim.args.long_poll_seconds > 0
        return True

    def heartbeat_body(self) -> bytes:
        if not self.downloading:
            return super().heartbeat_body()
        now_ms = int(time.time() * 1000)
        size = 150 * 1024**2
        body = json.loads(super().heartbeat_body())
        body["activeDownloads"] = [{
            "depId": dep_id, "stage": "downloading",
            "downloadedBytes": min(size, (now_ms - started) * size
                                   // max(1, int(self.sim.args.download_seconds * 1000))),
            "expectedBytes": size, "throughputBytesPerSec": 100 * 1024**2,
            "startedAtMs": started, "updatedAtMs": now_ms, "tool": "depman-agent",
        } for dep_id, started in self.started_ms.items()]
        return json.dumps(body).encode()

    async def long_poll_queue(self, wait: int) -> bool:
        """One held queue request; True when it brought work this agent started."""
        path = f"{self.poll_path}&waitSeconds={wait}"
        sent = time.time()
        try:
            status, answer = await self.queue_conn.request("GET", path, None, self.auth)
        except HttpError:
            self.sim.stats.record("long-poll", sent, False)
            return False
        stats = self.sim.stats
        started = 0
        if status == 200 and b'"itemId"' in answer:
            for item in json.loads(answer).get("items", []):
                if len(self.downloading) + started >= MAX_PARALLEL:
                    break
                if item["itemId"] not in self.handled:
                    self.handled.add(item["itemId"])
                    started += 1
                    self.sim.spawn(self.work(item))
        if stats.t_start <= sent < stats.t_end:
            if 200 <= status < 300:
                late = 0.0 if started else max(0.0, time.time() - sent - wait)
                stats.measured("long-poll", sent, late)
            else:
                stats.errors["long-poll"] += 1
        if status in (401, 403):
            self.auth = b""
        return started > 0

    async def work(self, item: dict[str, object]) -> None:
        self.busy_since = time.time()
        self.started_ms[str(item["depId"])] = int(time.time() * 1000)
        try:
            await super().work(item)
        finally:
            self.started_ms.pop(str(item["depId"]), None)

    async def sleep_until(self, due: float) -> bool:
        """Sleep until ``due``; True when a finished download woke it first."""
        delay = due - time.time()
        if delay <= 0:
            return False
        loop = asyncio.get_running_loop()
        self.wake = loop.create_future()
        timer = loop.call_later(delay, resolve_waiter, self.wake, False)
        try:
            return await self.wake
        finally:
            timer.cancel()
            self.wake = None

    async def run(self, start: float) -> None:
        args = self.sim.args
        await asyncio.sleep(max(0.0, start - time.time()))
        while not await self.register():
            if time.time() > self.sim.t_stop:
                return
            await asyncio.sleep(5)
        await self.heartbeat(time.time())
        self.sim.booted += 1
        next_poll = time.time() + random.uniform(0, 1.0)  # boots are spread by the ramp
        try:
            while time.time() < self.sim.t_stop:
                if not self.auth:
                    await self.register()
                interval = PROGRESS_SECONDS if self.downloading else args.heartbeat_seconds
                hb_due = self.last_hb + interval
                if self.downloading:
                    hb_due = max(hb_due, self.busy_since)
                if self.early_hb:
                    hb_due = min(hb_due, max(self.early_hb,
                                             self.last_hb + EARLY_HEARTBEAT_MIN_SECONDS))
                now = time.time()
                if now >= hb_due:
                    await self.heartbeat(max(hb_due, self.free_at))
                    continue
                if len(self.downloading) >= MAX_PARALLEL or now < next_poll:
                    until = hb_due if len(self.downloading) >= MAX_PARALLEL else \
                        min(hb_due, next_poll)
                    await self.sleep_until(min(until, self.sim.t_stop))
                    continue
                if not self.long_poll:
                    next_poll = now + args.poll_seconds * random.uniform(0.8, 1.2)
                    await self.poll(now)
                    continue
                busy = bool(self.downloading)
                want = BUSY_LONG_POLL_SECONDS if busy else int(min(30, max(
                    args.long_poll_seconds, IDLE_LONG_POLL_MIN_SECONDS)))
                if (not busy and hb_due - now < min(want, IDLE_LONG_POLL_MIN_SECONDS)
                        and now - self.last_hb >= IDLE_LONG_POLL_MIN_SECONDS):
                    await self.heartbeat(now)  # early, rather than cutting the poll short
                    hb_due = self.last_hb + interval
                wait = max(1, int(min(want, max(hb_due - time.time(), 1.0))))
                sent = time.time()
                got_work = await self.long_poll_queue(wait)
                self.free_at = time.time()
                next_poll = sent if got_work else sent + wait
        finally:
            self.queue_conn.close()
