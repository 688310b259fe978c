"""Run the agent as a real process and wait on its log lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

SRC = str(Path(__file__).resolve().parents[2] / "src")


class AgentProcess:
    """``python -m depman.agent`` (or a bundle) with an explicit env; collects its log."""

    def __init__(self, env: Mapping[str, str], *, bundle: Path | None = None) -> None:
        base = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}
        if bundle is None:
            base["PYTHONPATH"] = SRC
            self.cmd = [sys.executable, "-m", "depman.agent"]
        else:
            self.cmd = [sys.executable, "-I", "-S", str(bundle)]
        self.env = {**base, **env}
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> AgentProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if exc is not None:
            print("---- agent log ----\n" + self.log())

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def log(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern)
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(regex.search(line) for line in self.lines)
                or (self.proc is not None and self.proc.poll() is not None), timeout)
            for line in self.lines:
                match = regex.search(line)
                if match:
                    return match
        raise AssertionError(f"no log line matching {pattern!r} (ok={ok}):\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)
