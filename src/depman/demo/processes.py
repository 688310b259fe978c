"""Child processes of the demo (and the end-to-end tests): started, watched, stopped cleanly.

Each child gets its own session, so a Ctrl-C in the terminal reaches only the
demo, which then stops the children itself: SIGTERM, a grace period, SIGKILL.
Output goes to a log file and to a small in-memory tail that callers can wait on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

TAIL_LINES = 400
STOP_GRACE_SECONDS = 8.0
SERVER_LISTEN_RE = re.compile(r"listening on (http://[\w.\-]+:\d+)")


class ProcessFailed(RuntimeError):
    """A child exited or did not print what we waited for in time."""


class ChildProcess:
    """One running child with its log file and the tail of its output."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._changed = threading.Condition()
        self._log: IO[str] = log_path.open("a", encoding="utf-8")
        self.popen = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, name=f"pump-{name}", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, count: int = 40) -> str:
        """The last `count` lines the child printed."""
        with self._changed:
            return "".join(list(self._lines)[-count:])

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Block until a printed line matches; ProcessFailed on exit or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    match = pattern.search(line)
                    if match:
                        return match
                if self.popen.poll() is not None and not self._pump.is_alive():
                    raise ProcessFailed(
                        f"{self.name} exited with {self.popen.returncode} before printing "
                        f"{pattern.pattern!r}; last output:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProcessFailed(
                        f"{self.name} did not print {pattern.pattern!r} within {timeout:.0f}s; "
                        f"last output:\n{self.tail()}"
                    )
                self._changed.wait(min(left, 0.5))

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM, wait up to `grace`, then SIGKILL; answers the exit code."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(grace)
        self._pump.join(2)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL now (a crash, for tests), and reap it."""
        if self.popen.poll() is None:
            self._signal(signal.SIGKILL)
            self.popen.wait(STOP_GRACE_SECONDS)
        self._pump.join(2)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def _read(self) -> None:
        stream = self.popen.stdout
        if stream is None:
            return
        for line in stream:
            try:
                self._log.write(line)
                self._log.flush()
            except ValueError:  # log closed by stop() while the child still printed
                pass
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()


def python_module_argv(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without depman's and the agent's knobs, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPMAN_", "DM_"))
        and key
        not in (
            "DEPENDENCY_MANAGER_SHARED_SECRET",
            "FCS_API_BASE_URL",
            "HF_TOKEN",
            "CIVITAI_TOKEN",
            "SERVER_TYPE",
            "WORKSPACE",
        )
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
