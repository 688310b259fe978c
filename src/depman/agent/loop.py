"""The agent loop: one thread talks to the control plane, a small pool runs items."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import protocol as p
from .answer_checks import sanitize_policy
from .cache import Cache
from .client import ControlPlaneClient, static_dep_ids
from .config import AgentConfig
from .errors import AgentError, ServerError, Stopping, UnsafePath
from .eviction import EvictionPolicy, Evictor
from .fallback import BadSources
from .inventory_check import recheck_inventory
from .items import ItemRunner, Outcome, item_root
from .logonce import problems
from .model_roots import ModelRoots
from .operator_items import (
    ForcedRetries,
    ItemStop,
    cancel_reason,
    cancelled_error,
    delete_file,
)
from .outbox import StatusOutbox
from .pacing import QueuePacer
from .progress import Progress
from .receipts import verification
from .redact import redact
from .retry import RetryPolicy
from .self_update import SelfUpdater
from .sidefiles import remove_write_leftovers
from .state import StateStore

log = logging.getLogger("depman.agent")


@dataclass
class _Active:
    item: dict[str, Any]
    progress: Progress
    future: Future[Outcome]
    stop: ItemStop | None = None
    cancel_reason: str | None = None  # set when an operator cancelled it mid-download


class Agent:
    """``run(max_iterations=None)``; ``request_stop()`` from a signal handler or a test."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.cache = Cache(config.comfyui_dir, StateStore(config.state_path))
        # A DM_EXTRA_MODEL_PATHS that cannot be read stops start-up (ConfigError).
        self.cache.roots = ModelRoots.load(config.extra_model_paths, config.comfyui_dir)
        self.client = ControlPlaneClient(config, self.stop)
        self.outbox = StatusOutbox(self.client)
        self.pacer = QueuePacer(config)
        self.policy = EvictionPolicy.resolve(None, config)
        self.pinned: set[str] = set()
        # The profile's model root (register answer): deps without their own go there.
        self.default_root: str | None = None
        # Sources that served wrong bytes for a file are never asked for it again.
        self.bad_sources = BadSources()
        self.active: dict[str, _Active] = {}
        self.done_items: OrderedDict[str, None] = OrderedDict()
        self.pool = ThreadPoolExecutor(max_workers=config.max_parallel_downloads,
                                       thread_name_prefix="item")
        self.resume_items: list[dict[str, Any]] = []
        self.last_heartbeat = 0.0
        self.heartbeat_early = False
        self.queue_depth = 0
        self.updater = SelfUpdater(config)
        self.forced = ForcedRetries(self.cache)

    # -- public -----------------------------------------------------------
    def request_stop(self) -> None:
        """Stop taking work; running downloads stop at their next resumable point."""
        self.stop.set()
        self.wake.set()
        self.client.abort()

    def run(self, max_iterations: int | None = None) -> int:
        """Serve until stopped. Nothing the network, the disk or the server does ends it:
        a failed cycle is logged once and the next one waits with capped backoff."""
        backoff = RetryPolicy(max_attempts=None, base_delay=1.0, max_delay=60.0)
        try:
            self.start_up()
            iterations = 0
            while not self.stop.is_set():
                if max_iterations is not None and iterations >= max_iterations:
                    break
                iterations += 1
                try:
                    self.iterate()
                except Stopping:
                    break
                except Exception as exc:  # the agent must keep serving
                    delay = backoff.next_delay() or 0.0
                    self.cycle_failed(exc, delay)
                    self.wait(delay)
                else:
                    backoff.reset()
                    problems.ok("agent cycle")
        finally:
            self.tear_down()
        return 0

    def cycle_failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, AgentError):
            problems.warn("agent cycle", "Agent cycle failed: %s; retrying with backoff "
                          "(now %.1f s)", exc.message, delay)
        elif not problems.is_open("agent cycle"):
            log.exception("Agent cycle failed unexpectedly; retrying with backoff")
            problems.warn("agent cycle", "Agent cycle failed: %s: %s", exc.__class__.__name__,
                          exc)

    # -- helpers for the item runner -------------------------------------
    def evictor(self) -> Evictor:
        return Evictor(self.cache, self.policy)

    def protected_ids(self) -> set[str]:
        return set(self.pinned) | set(self.active)

    # -- the cycle --------------------------------------------------------
    def start_up(self) -> None:
        # A build started again during its probation (a reboot, a kill) watches itself anew.
        self.updater.at_start()
        comfy = self.config.comfyui_dir
        if not comfy.is_dir():
            try:
                comfy.mkdir(parents=True, exist_ok=True)
                log.warning("ComfyUI folder %s did not exist; created it. Set DM_COMFYUI_DIR "
                            "if ComfyUI lives elsewhere.", comfy)
            except OSError as exc:
                log.error("ComfyUI folder %s does not exist and cannot be created (%s). Set "
                          "DM_COMFYUI_DIR to the ComfyUI folder; downloads will fail until "
                          "then.", comfy, exc)
        if remove_write_leftovers(self.config.state_path):
            log.info("Removed temp files of state writes cut short by an earlier kill")
        try:
            recheck_inventory(self.cache)
        except OSError as exc:
            log.warning("Could not check the files the state file lists: %s", exc)
        self.resume_items = [i for i in self.cache.inflight_items() if i.get("itemId")]
        if self.resume_items:
            log.info("Resuming %d download(s) interrupted by the last shutdown",
                     len(self.resume_items))

    def register(self) -> None:
        reg = self.client.register()
        self.updater.registered()
        self.consider_update(reg.agent_update)
        profile = reg.profile or {}
        self.policy = EvictionPolicy.resolve(sanitize_policy(profile.get("dynamicPolicy")),
                                             self.config)
        root = profile.get("root")
        self.default_root = root if isinstance(root, str) and root else None
        self.apply_static_ids(static_dep_ids(profile))
        self.cache.state.instance_id = reg.instance_id
        self.cache.save()
        self.send_heartbeat()  # v1: the first heartbeat goes before the first queue poll

    def iterate(self) -> None:
        if self.client.registration is None:
            self.register()
        self.cache.flush()
        self.outbox.flush()
        self.collect_finished()
        if self.heartbeat_due() <= 0:
            self.send_heartbeat()
        if self.resume_items:
            items, self.resume_items = self.resume_items, []
            self.dispatch(items)
        free_slots = self.config.max_parallel_downloads - len(self.active)
        if free_slots <= 0:
            self.wait(self.heartbeat_due())
            return
        hold = self.pacer.hold()
        if hold > 0:  # the last request is not over yet: wait, waking for a finished item
            self.wait(min(hold, max(0.0, self.heartbeat_due())))
            return
        reg = self.client.registration
        long_poll = reg is not None and reg.long_poll and self.config.long_poll_seconds > 0
        busy = bool(self.active)
        wait = 0
        if long_poll:
            since = time.monotonic() - self.last_heartbeat
            if self.pacer.heartbeat_first(busy, self.heartbeat_due(), since):
                self.send_heartbeat()
            wait = self.pacer.wait_for(busy, self.heartbeat_due())
        self.pacer.start()
        answer = self.client.queue(p.QUEUE_LIMIT, wait)
        if answer.pinned is not None:
            self.pinned = answer.pinned
        self.apply_static_ids(answer.static_ids)
        self.queue_depth = len(answer.items)
        self.reject(answer.rejected)
        started = self.dispatch(answer.items)
        self.pacer.done(long_poll=long_poll, wait_seconds=wait,
                        new_work=bool(started or answer.rejected))

    def wait(self, seconds: float) -> None:
        if seconds > 0 and self.wake.wait(seconds):
            self.wake.clear()

    def heartbeat_due(self) -> float:
        """Seconds until the next heartbeat is due (<= 0: now)."""
        interval = self.config.heartbeat_seconds
        if self.active:
            interval = min(interval, self.config.progress_seconds)
        if self.heartbeat_early:
            interval = min(interval, p.EARLY_HEARTBEAT_MIN_SECONDS)
        return self.last_heartbeat + interval - time.monotonic()

    def heartbeat_body(self) -> dict[str, Any]:
        stats = self.cache.disk_stats()
        static = self.cache.installed_ids(p.DepKind.STATIC.value)
        dynamic = self.cache.installed_ids(p.DepKind.DYNAMIC.value)
        # A finished download stays in `active` while its worker runs the post-download
        # eviction; installed wins, so a dep is never reported both held and in flight.
        held = set(static) | set(dynamic)
        active = {dep_id: a for dep_id, a in self.active.items() if dep_id not in held}
        return {
            "installedStaticDepIds": static,
            "installedDynamicDepIds": dynamic,
            "downloadingDepIds": sorted(active),
            "failedDepIds": self.cache.failed_ids(),
            "diskStats": stats.to_json(),
            "dynamicBytesUsed": self.cache.dynamic_bytes(),
            "queueDepth": self.queue_depth,
            "activeDownloads": [a.progress.snapshot() for a in active.values()],
        }

    def send_heartbeat(self, attempts: int | None = None) -> None:
        # Report only files that are still what was verified (an rm behind our back).
        recheck_inventory(self.cache, skip=set(self.active))
        answer = self.client.heartbeat(self.heartbeat_body(), attempts=attempts)
        if answer.pinned is not None:
            self.pinned = answer.pinned
        self.consider_update(answer.agent_update)
        self.apply_static_ids(answer.static_ids)
        self.last_heartbeat = time.monotonic()
        # After the answer: its pins are the server's word on what jobs here need. What
        # goes is reported early, before a job is placed here for it.
        self.heartbeat_early = self.restore_policy()
        self.check_cancels()

    def restore_policy(self) -> bool:
        """Evict what the cap or the floor no longer allows, now that pins may have lapsed;
        whether anything went."""
        try:
            evicted = self.evictor().restore(self.protected_ids())
        except OSError as exc:
            problems.warn("cache restore", "Could not check the cache against its policy: %s",
                          exc)
            return False
        problems.ok("cache restore")
        return bool(evicted)

    def check_cancels(self) -> None:
        """Ask whether an operator cancelled a running download; stop it if so."""
        if self.stop.is_set():
            return
        for active in list(self.active.values()):
            if active.cancel_reason is not None or active.future.done():
                continue
            try:
                item = self.client.item_check(str(active.item.get("itemId")))
            except AgentError as exc:
                log.info("Queue-item check failed (%s); asking again later", exc.message)
                return
            if item is None:
                continue
            reason = cancel_reason(item)
            if reason is not None and active.stop is not None:
                log.warning("Download of %s cancelled by the operator: %s",
                            active.item.get("depId"), reason)
                active.cancel_reason = reason
                active.stop.set()

    def consider_update(self, update: Any) -> None:
        """A new agent build installed: stop like on SIGTERM; main() re-executes into it."""
        if not self.stop.is_set() and self.updater.offer(update):
            self.request_stop()

    def apply_static_ids(self, static_ids: set[str] | None) -> None:
        """The profile's static deps now: one no longer listed becomes evictable."""
        if static_ids is None:
            return
        for dep_id, kind in self.cache.apply_static_ids(static_ids):
            log.info("Dep %s is now %s (the profile's static deps changed)", dep_id, kind)
            self.heartbeat_early = True

    def post_status(self, item: dict[str, Any], state: p.ItemState, error: str | None = None,
                    attempts: int | None = None, extra: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {
            "itemId": item.get("itemId"), "depId": item.get("depId"), "op": item.get("op"),
            "state": state.value, "diskStats": self.cache.disk_stats().to_json(),
            "dynamicBytesUsed": self.cache.dynamic_bytes(), **(extra or {}),
        }
        if error is not None:
            body["error"] = redact(error)[:p.ERROR_MAX_CHARS]
        if state is p.ItemState.SUCCEEDED:
            record = self.cache.record(str(item.get("depId")))
            if record is not None:  # the receipt of the final file, as later field agents send
                body["verification"] = verification(record)
        self.outbox.post(body, attempts=attempts)

    def reject(self, rejected: list[tuple[dict[str, Any], str]]) -> None:
        """Malformed items are reported failed with the reason; the rest is served."""
        for item, reason in rejected:
            item_id = item["itemId"]
            if item_id in self.done_items or item["depId"] in self.active:
                continue
            log.warning("Item %s (%s): %s", item_id, item["depId"], reason)
            self.post_status(item, p.ItemState.RUNNING)
            self.post_status(item, p.ItemState.FAILED, reason)
            self.remember(item_id)

    # -- items ------------------------------------------------------------
    def dispatch(self, items: list[dict[str, Any]]) -> int:
        """Start what fits; never the same dep or item twice in our own workers."""
        started = 0
        for item in items:
            if self.stop.is_set() or len(self.active) >= self.config.max_parallel_downloads:
                break
            dep_id, item_id = item.get("depId"), item.get("itemId")
            if not isinstance(dep_id, str) or not isinstance(item_id, str):
                continue
            if item.get("forceRetry") and item_id in self.done_items:
                del self.done_items[item_id]  # the operator asks for it again
            if dep_id in self.active or item_id in self.done_items:
                continue
            reason = cancel_reason(item)
            if reason is not None:
                self.post_status(item, p.ItemState.CANCELLED, cancelled_error(reason))
                self.remember(item_id)
                continue
            if not self.forced.ready(item):
                continue
            started += 1
            op = item.get("op")
            if op == p.Op.DELETE.value:
                self.delete_in_place(item)
                continue
            if op == p.Op.TOUCH.value and self.touch_in_place(item):
                continue
            if op not in (p.Op.DOWNLOAD.value, p.Op.TOUCH.value):
                self.post_status(item, p.ItemState.FAILED, f"Unknown op: {op}")
                self.remember(item_id)
                continue
            self.start_item(item)
        return started

    def touch_in_place(self, item: dict[str, Any]) -> bool:
        """A touch succeeds only for a file still matching its receipt; else it downloads."""
        dep_id = item["depId"]
        record = self.cache.record(dep_id)
        if record is not None and self.cache.file_matches(record):
            self.post_status(item, p.ItemState.RUNNING)
            self.cache.touch(dep_id)
            self.post_status(item, p.ItemState.SUCCEEDED)
            self.remember(item["itemId"])
            return True
        if record is not None:
            # Gone or changed: never report it installed; the download below proves it
            # again (a changed file whose sha256 still matches is adopted, not fetched).
            self.cache.forget(dep_id)
            self.heartbeat_early = True
        resolved = item.get("resolved") or {}
        if resolved.get("url"):
            log.info("Touch for %s whose file is missing or changed: fetching it again",
                     dep_id)
            return False
        self.post_status(item, p.ItemState.RUNNING)
        self.post_status(item, p.ItemState.FAILED,
                         f"File missing or changed for touch: {resolved.get('destRelativePath')}")
        self.remember(item["itemId"])
        return True

    def delete_in_place(self, item: dict[str, Any]) -> None:
        """An operator's delete: remove the file, report, and heartbeat the new inventory."""
        self.post_status(item, p.ItemState.RUNNING)
        error = delete_file(self.cache, item)
        if error is None:
            self.post_status(item, p.ItemState.SUCCEEDED)
        else:
            log.error("Delete of %s failed: %s", item.get("depId"), error)
            self.post_status(item, p.ItemState.FAILED, error)
        self.remember(item["itemId"])
        self.heartbeat_early = True

    def start_item(self, item: dict[str, Any]) -> None:
        dep_id = item["depId"]
        try:
            self.cache.path_for(str((item.get("resolved") or {}).get("destRelativePath", "")),
                                root=item_root(item, self.default_root, self.cache.roots))
        except UnsafePath as exc:
            text = exc.report()
            log.error("Item %s (%s) failed: %s", item.get("itemId"), dep_id, text)
            self.post_status(item, p.ItemState.RUNNING)
            self.post_status(item, p.ItemState.FAILED, text)
            self.cache.mark_failed(dep_id, text)
            self.remember(item["itemId"])
            return
        progress = Progress(dep_id, log_every=self.config.progress_seconds
                            if self.config.verbose_progress else None)
        # The download starts first: the first byte should not wait for the status round
        # trip or the state file's fsync (that wait is dispatch latency). Its outcome is
        # collected on this thread, so the server still sees running before succeeded,
        # and the in-flight record is written before it can be cleared.
        # Its own stop, so an operator's cancel ends this download and no other.
        stop = ItemStop(self.stop)
        runner = ItemRunner(self.config, self.cache, stop, self.evictor, self.protected_ids)
        runner.default_root = self.default_root
        runner.bad_sources = self.bad_sources
        future = self.pool.submit(runner.run, item, progress)
        self.active[dep_id] = _Active(item, progress, future, stop)
        self.post_status(item, p.ItemState.RUNNING)
        self.cache.set_inflight(dep_id, item)
        future.add_done_callback(lambda _f: self.wake.set())

    def collect_finished(self, attempts: int | None = None) -> None:
        for dep_id, active in list(self.active.items()):
            if not active.future.done():
                continue
            del self.active[dep_id]
            outcome = active.future.result()
            if active.cancel_reason is not None and not outcome.ok:
                self.cache.clear_inflight(dep_id)
                self.post_status(active.item, p.ItemState.CANCELLED,
                                 cancelled_error(active.cancel_reason), attempts=attempts)
                self.remember(active.item["itemId"])
                self.heartbeat_early = True
                continue
            if outcome.interrupted:
                continue  # stays in state.inflight; resumed on the next start
            if outcome.ok:
                self.cache.clear_inflight(dep_id)
                # A warning (ComfyUI does not list the file) rides on the succeeded status.
                self.post_status(active.item, p.ItemState.SUCCEEDED, outcome.warning,
                                 attempts=attempts, extra=outcome.report)
            else:
                error = outcome.error or "failed"
                self.cache.mark_failed(dep_id, error)
                self.post_status(active.item, p.ItemState.FAILED, error, attempts=attempts,
                                 extra=outcome.report)
            self.remember(active.item["itemId"])
            self.heartbeat_early = True

    def remember(self, item_id: str) -> None:
        self.done_items[item_id] = None
        while len(self.done_items) > 1000:
            self.done_items.popitem(last=False)

    def tear_down(self) -> None:
        """Let downloads reach a resumable point, report what finished, save state."""
        self.stop.set()
        self.pool.shutdown(wait=True)
        self.client.aborted = False
        try:
            if self.client.registration is not None:
                self.collect_finished(attempts=1)
                self.send_heartbeat(attempts=1)
        except (AgentError, OSError) as exc:
            message = exc.message if isinstance(exc, ServerError) else str(exc)
            log.warning("Could not report to the control plane while stopping: %s", message)
        self.cache.save()
        log.info("Dependency agent stopped")
