"""Several server processes on one listening socket: fork after bind, then supervise.

One Python process is bound to one core by the GIL; at 10,000 agents the agent
gateway, job placement and status reports together need more. The parent binds
and migrates, forks `workers` children before any thread or database connection
exists, and each child builds its own app, pool and memos: to each other they are
replicas, kept coherent by PostgreSQL NOTIFY, which is why SQLite refuses this.
The parent forwards SIGTERM/SIGINT once as SIGTERM, restarts a child that dies
on its own (after RESTART_DELAY_SECONDS), and exits with the children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("depman.server")
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 20.0


class Supervisor:
    """Forks and watches the worker processes."""

    def __init__(self, count: int, run_worker: Callable[[int], None]) -> None:
        self.count = count
        self.run_worker = run_worker
        self.children: dict[int, int] = {}  # pid → worker index
        self.stopping = False

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: default signals, serve, never return into the parent's code
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                self.run_worker(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("server worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
            os._exit(code)
        self.children[pid] = index

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> int:
        """Fork every worker; return once all have exited after a stop signal."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self.count):
            self._fork(index)
        deadline: float | None = None
        while self.children:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                for pid in list(self.children):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.2)
                continue
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            if not self.stopping:
                log.error("server worker %d (pid %d) exited with status %d; restarting",
                          index, pid, os.waitstatus_to_exitcode(status))
                time.sleep(RESTART_DELAY_SECONDS)
                self._fork(index)
        return 0


def serve_workers(count: int, sock: socket.socket, run_worker: Callable[[int], None]) -> int:
    """Run `count` workers on `sock` (already bound and listening) until stopped."""
    try:
        return Supervisor(count, run_worker).run()
    finally:
        sock.close()
