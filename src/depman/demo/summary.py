"""The demo's closing summary: jobs, bytes, cache hits, evictions, time per job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from depman.demo.display import STATE_STYLES, human_bytes
from depman.demo.jobs import JobRecord


@dataclass(frozen=True)
class JobLine:
    """One job in the summary."""

    label: str
    job_id: str
    instance_id: str
    state: str
    seconds: float | None
    hits: int | None
    deps: int
    error: str | None


@dataclass(frozen=True)
class Summary:
    """The numbers the demo ends with."""

    jobs: list[JobLine]
    bytes_downloaded: int | None
    evictions: int
    installs: int
    wall_seconds: float

    @property
    def completed(self) -> int:
        return sum(1 for job in self.jobs if job.state == "completed")

    @property
    def ok(self) -> bool:
        """Every job completed."""
        return bool(self.jobs) and self.completed == len(self.jobs)

    @property
    def cache_hits(self) -> int:
        return sum(job.hits or 0 for job in self.jobs)

    @property
    def dep_requests(self) -> int:
        return sum(job.deps for job in self.jobs)

    def result_line(self) -> str:
        """One greppable line (the e2e test reads it)."""
        served = -1 if self.bytes_downloaded is None else self.bytes_downloaded
        return (
            f"demo result: {'ok' if self.ok else 'FAILED'} "
            f"jobs_completed={self.completed}/{len(self.jobs)} "
            f"bytes_downloaded={served} "
            f"cache_hits={self.cache_hits}/{self.dep_requests} evictions={self.evictions} "
            f"seconds={self.wall_seconds:.1f}"
        )


def build_summary(
    records: Sequence[JobRecord],
    hits: Mapping[str, int],
    *,
    bytes_downloaded: int | None,
    evictions: int,
    installs: int,
    wall_seconds: float,
) -> Summary:
    """Freeze what the run saw into a Summary (`hits` by job label)."""
    lines = [
        JobLine(
            label=r.label,
            job_id=r.job_id or "-",
            instance_id=r.instance_id or "-",
            state=r.state,
            seconds=r.seconds,
            hits=hits.get(r.label),
            deps=len(r.dep_ids),
            error=r.error if r.state != "completed" else None,
        )
        for r in records
    ]
    return Summary(lines, bytes_downloaded, evictions, installs, wall_seconds)


def render_summary(summary: Summary) -> RenderableType:
    """The summary panel."""
    table = Table(box=None, pad_edge=False)
    table.add_column("job")
    table.add_column("instance")
    table.add_column("state")
    table.add_column("cache hits", justify="right")
    table.add_column("time", justify="right")
    for job in summary.jobs:
        table.add_row(
            job.label,
            job.instance_id,
            Text(job.state, STATE_STYLES.get(job.state, "")),
            "-" if job.hits is None else f"{job.hits}/{job.deps}",
            "-" if job.seconds is None else f"{job.seconds:.1f}s",
        )
        if job.error:
            table.add_row("", "", Text(job.error[:300], "red"), "", "")
    facts = Table.grid(padding=(0, 2))
    facts.add_row("jobs completed", f"{summary.completed}/{len(summary.jobs)}")
    facts.add_row("bytes downloaded", human_bytes(summary.bytes_downloaded)
                  + " (served by the origin)")
    facts.add_row("cache hits", f"{summary.cache_hits} of {summary.dep_requests} job deps were "
                  "already on the instance the job was placed on")
    facts.add_row("installs / evictions", f"{summary.installs} / {summary.evictions}")
    times = [job.seconds for job in summary.jobs if job.seconds is not None]
    if times:
        facts.add_row("time per job", f"mean {sum(times) / len(times):.1f}s, "
                      f"max {max(times):.1f}s (submit to complete)")
    facts.add_row("wall time", f"{summary.wall_seconds:.1f}s")
    style = "green" if summary.ok else "red"
    return Panel(Group(facts, Text(""), table), title="summary", title_align="left",
                 border_style=style)


def print_summary(console: Console, summary: Summary) -> None:
    """The panel, then the greppable result line."""
    console.print(render_summary(summary))
    console.print(summary.result_line(), markup=False, highlight=False, soft_wrap=True)
