"""What every benchmark shares: machine facts, tables, RESULTS.md, process sampling."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
MIB = 1024**2
GIB = 1024**3

console = Console(width=140)


# --------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class Machine:
    """The facts a figure is meaningless without."""

    nproc: int
    memory_bytes: int
    cpu_model: str
    kernel: str
    python: str
    date: str
    # Seconds for CALIBRATION_LOOPS additions in a Python loop: machines sold under one
    # CPU model and nproc differ by 2x in it, and the server's figures follow it.
    loop_seconds: float

    def line(self) -> str:
        return (
            f"{self.date} · nproc {self.nproc} · {self.memory_bytes / GIB:.1f} GiB RAM · "
            f"{self.cpu_model} · Linux {self.kernel} · Python {self.python} · "
            f"10M-step Python loop {self.loop_seconds:.2f} s"
        )


CALIBRATION_LOOPS = 10_000_000


def python_loop_seconds() -> float:
    """The fastest of three runs of a plain Python loop: this machine's speed, in one figure."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for step in range(CALIBRATION_LOOPS):
            total += step
        best = min(best, time.perf_counter() - started)
    return best


def machine_info() -> Machine:
    """nproc, memory, CPU model, kernel, Python, speed and the UTC date of this run."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.startswith("model name"):
                cpu = raw.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Machine(
        nproc=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        cpu_model=cpu,
        kernel=platform.release(),
        python=platform.python_version(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        loop_seconds=python_loop_seconds(),
    )


# --------------------------------------------------------------------------- tables


@dataclass
class ResultTable:
    """A titled table that renders both to the terminal (Rich) and to Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def print(self) -> None:
        table = Table(title=self.title, title_justify="left")
        for i, name in enumerate(self.columns):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        rule = "| " + " | ".join(["---"] + ["---:"] * (len(self.columns) - 1)) + " |"
        body = ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join([f"**{self.title}**", "", head, rule, *body])


RESULTS_HEADER = (
    "# Benchmark results\n\nThe latest recorded run of each benchmark, one section each; a new "
    "run takes its section's place and the older one moves to `history/<benchmark>.md`.\n\n"
)
HISTORY_HEADER = (
    "# {title}: earlier runs\n\nOlder runs of `bench/{benchmark}.py`, moved out of "
    "bench/RESULTS.md when a newer one was recorded (newest last).\n\n"
)


def split_sections(text: str) -> tuple[str, list[str]]:
    """The text before the first `## ` heading, and each `## ` section (heading included)."""
    parts = re.split(r"(?m)^(?=## )", text)
    return parts[0], [part for part in parts[1:] if part]


def section_name(section: str) -> str:
    """`## Fleet load, v1 agents, PostgreSQL — 2026-12-04 04:57 UTC` -> the name before the date."""
    heading = section.split("\n", 1)[0].removeprefix("## ")
    return heading.split(" — ", 1)[0].strip()


def record_results(
    name: str,
    command: str,
    tables: Sequence[ResultTable],
    notes: Iterable[str] = (),
    path: Path = RESULTS_PATH,
    *,
    history: str,
) -> None:
    """Record one run of benchmark `name` in RESULTS.md, in place of its previous run.

    The previous run moves to `history/<history>.md` beside the results file (newest
    last), so RESULTS.md always reads as the latest figure of each benchmark.
    """
    machine = machine_info()
    parts = [
        f"## {name} — {machine.date}",
        "",
        f"`{command}`  ",
        f"Machine: {machine.line()}",
        "",
    ]
    for table in tables:
        parts += [table.markdown(), ""]
    notes = list(notes)
    if notes:
        parts += [f"- {n}" for n in notes] + [""]
    section = "\n".join(parts) + "\n"
    preamble, sections = split_sections(path.read_text() if path.exists() else RESULTS_HEADER)
    older = [s for s in sections if section_name(s) == name]
    if older:
        sections[sections.index(older[0])] = section
        sections = [s for s in sections if s not in older[1:]]
        history_path = path.parent / "history" / f"{history}.md"
        history_path.parent.mkdir(parents=True, exist_ok=True)
        if not history_path.exists():
            history_path.write_text(HISTORY_HEADER.format(title=name, benchmark=history))
        with history_path.open("a") as fh:
            for old in older:
                fh.write("\n" + old.rstrip("\n") + "\n")
    else:
        sections.append(section)
    text = preamble + "".join(s if s.endswith("\n\n") else s.rstrip("\n") + "\n\n"
                              for s in sections)
    path.write_text(text.rstrip("\n") + "\n")
    console.print(f"[green]recorded in {path}[/green]")


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark has: --smoke, --record / --no-record, --results."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny sizes, seconds; records nothing unless --record."
    )
    rec = parser.add_mutually_exclusive_group()
    rec.add_argument("--record", dest="record", action="store_true", default=None,
                     help="Append to RESULTS.md (the default in full mode).")
    rec.add_argument("--no-record", dest="record", action="store_false",
                     help="Print only.")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH,
                        help="Which results file to record in.")
    return parser


def should_record(args: argparse.Namespace) -> bool:
    return bool(args.record) if args.record is not None else not args.smoke


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- processes


@dataclass
class Usage:
    """CPU seconds and RSS of a process tree over a window."""

    cpu_seconds: float
    wall_seconds: float
    rss_peak: int
    rss_last: int

    @property
    def cpu_percent(self) -> float:
        """Of one core: 100 = one core busy all the time."""
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _tree_cpu_rss(proc: psutil.Process) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return cpu, rss


class ProcessSampler:
    """Samples a process (and its children) in a thread: CPU seconds used and peak RSS.

    `mark()` starts a measurement window so warm-up does not count.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self._cpu0, _ = _tree_cpu_rss(self._proc)
        self._t0 = time.monotonic()
        self._peak = 0
        self._last = 0

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            _, rss = _tree_cpu_rss(self._proc)
            with self._lock:
                self._last = rss
                self._peak = max(self._peak, rss)

    def mark(self) -> None:
        with self._lock:
            self._cpu0, _ = _tree_cpu_rss(self._proc)
            self._t0 = time.monotonic()
            self._peak = self._last

    def usage(self) -> Usage:
        cpu, rss = _tree_cpu_rss(self._proc)
        with self._lock:
            return Usage(
                cpu_seconds=cpu - self._cpu0,
                wall_seconds=time.monotonic() - self._t0,
                rss_peak=max(self._peak, rss),
                rss_last=rss,
            )


@dataclass
class TimedRun:
    """Wall time and peak RSS (from GNU time) of one external command."""

    wall_seconds: float
    max_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


GNU_TIME = "/usr/bin/time"


def run_timed(cmd: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float | None = None, cwd: Path | None = REPO_ROOT) -> TimedRun:
    """Run `cmd` under GNU time when available (peak RSS of the command itself)."""
    rss_file = None
    full = list(cmd)
    if Path(GNU_TIME).exists():
        import tempfile

        fd, rss_file = tempfile.mkstemp(prefix="bench-time-")
        os.close(fd)
        full = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd, check=False)
    wall = time.perf_counter() - t0
    rss = 0
    if rss_file:
        try:
            text = Path(rss_file).read_text().strip().splitlines()
            rss = int(text[-1]) * 1024 if text else 0
        except (OSError, ValueError):
            rss = 0
        finally:
            os.unlink(rss_file)
    return TimedRun(wall, rss, proc.returncode, proc.stdout, proc.stderr)


def jsonable(obj: Any) -> Any:
    """Dataclasses and floats made safe for json.dumps."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
