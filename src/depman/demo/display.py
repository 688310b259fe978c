"""The demo's live terminal view (Rich): instances, downloads, jobs, recent events.

On a terminal it redraws in place; elsewhere (CI, a pipe) Rich prints nothing
live, so the runner prints events as plain lines instead and the final frame once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from depman.demo.jobs import JobRecord
from depman.demo.monitor import Event, InstanceView

STATE_STYLES = {
    "pending": "yellow",
    "waiting_deps": "cyan",
    "ready": "bright_cyan",
    "running": "bold blue",
    "completed": "green",
    "failed": "bold red",
}
EVENT_STYLES = {"installed": "green", "evicted": "magenta", "failed": "red", "live": "blue"}
RECENT_EVENTS = 8


def human_bytes(count: float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass
class Frame:
    """Everything one redraw shows."""

    title: str
    phase: str
    started_at: float
    instances: Mapping[str, InstanceView]
    jobs: Sequence[JobRecord]
    events: Sequence[Event]
    dynamic_cap: int
    dep_sizes: Mapping[str, int]


def render(frame: Frame) -> RenderableType:
    """The whole screen."""
    elapsed = time.monotonic() - frame.started_at
    header = Text.assemble(
        (frame.title, "bold"), "  ", (frame.phase, "italic"), "  ", (f"{elapsed:5.1f}s", "dim")
    )
    return Group(
        header,
        Panel(_instances_table(frame), title="instances", title_align="left"),
        Panel(_downloads_table(frame), title="downloads", title_align="left"),
        Panel(_jobs_table(frame), title="jobs", title_align="left"),
        Panel(_events_text(frame), title="events", title_align="left"),
    )


def _instances_table(frame: Frame) -> RenderableType:
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("instance", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("static")
    table.add_column("dynamic (LRU cache)")
    table.add_column("cache use", no_wrap=True)
    table.add_column("disk free", no_wrap=True, justify="right")
    if not frame.instances:
        table.add_row(Text("waiting for the first heartbeats...", "dim"), "", "", "", "", "")
    for iid in sorted(frame.instances):
        view = frame.instances[iid]
        status = Text("live", "green") if view.live else Text("not live", "red")
        cap = frame.dynamic_cap
        bar = ProgressBar(total=cap or 1, completed=min(view.dynamic_bytes, cap or 1), width=12)
        use = Table.grid(padding=(0, 1))
        use.add_row(bar, Text(f"{human_bytes(view.dynamic_bytes)}/{human_bytes(cap)}"))
        table.add_row(
            iid,
            status,
            ", ".join(sorted(view.static)) or "-",
            ", ".join(sorted(view.dynamic)) or "-",
            use,
            human_bytes(view.disk.get("freeBytes")),
        )
    return table


def _downloads_table(frame: Frame) -> RenderableType:
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("instance", no_wrap=True)
    table.add_column("dep", no_wrap=True)
    table.add_column("progress", ratio=1)
    table.add_column("done", no_wrap=True, justify="right")
    table.add_column("speed", no_wrap=True, justify="right")
    rows = 0
    for iid in sorted(frame.instances):
        view = frame.instances[iid]
        reported = {str(d.get("depId")): d for d in view.active_downloads}
        in_flight = list(reported) + [d for d in view.downloading if d not in reported]
        # A heartbeat may still list a dep it already reports installed: installed wins.
        for dep_id in [d for d in in_flight if d not in view.installed]:
            item = reported.get(dep_id, {})
            total = int(
                item.get("expectedBytes")
                or item.get("bytesTotal")
                or frame.dep_sizes.get(dep_id)
                or 0
            )
            done = int(item.get("downloadedBytes") or item.get("bytesDone") or 0)
            speed = item.get("throughputBytesPerSec") or item.get("bytesPerSecond")
            # All bytes in but not installed yet: the sha256 check and the rename.
            verifying = bool(total) and done >= total
            table.add_row(
                iid,
                dep_id,
                ProgressBar(total=total or 1, completed=min(done, total or 1)),
                f"{human_bytes(done)}/{human_bytes(total or None)}",
                "verifying" if verifying else f"{human_bytes(speed)}/s" if speed else "-",
            )
            rows += 1
    if not rows:
        table.add_row(Text("no download in flight", "dim"), "", "", "", "")
    return table


def _jobs_table(frame: Frame) -> RenderableType:
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("job", no_wrap=True)
    table.add_column("instance", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("deps")
    table.add_column("time", no_wrap=True, justify="right")
    for record in frame.jobs:
        state = Text(record.state, STATE_STYLES.get(record.state, ""))
        held = (frame.instances.get(record.instance_id or "") or None)
        deps = Text()
        for i, dep_id in enumerate(record.dep_ids):
            if i:
                deps.append(" ")
            have = held is not None and dep_id in held.installed
            deps.append(dep_id, "green" if have or record.state == "completed" else "dim")
        seconds = record.seconds
        table.add_row(
            f"{record.label} ({record.job_id})" if record.job_id != record.label else record.label,
            record.instance_id or "-",
            state,
            deps,
            f"{seconds:.1f}s" if seconds is not None else "-",
        )
        if record.state == "failed" and record.error:
            table.add_row("", "", "", Text(record.error[:200], "red"), "")
    return table


def _events_text(frame: Frame) -> RenderableType:
    text = Text()
    recent = list(frame.events)[-RECENT_EVENTS:]
    if not recent:
        return Text("-", "dim")
    for i, event in enumerate(recent):
        if i:
            text.append("\n")
        text.append(f"+{event.at - frame.started_at:5.1f}s ", "dim")
        text.append(event.describe(), EVENT_STYLES.get(event.kind, ""))
    return text
