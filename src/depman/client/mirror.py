"""What `depman mirror status` and `depman mirror fill` do; `depman.cli` only parses flags."""

from __future__ import annotations

import threading

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from depman.client.api import AdminClient, JsonDoc
from depman.client.commands import make_console, open_client, reported_errors
from depman.client.errors import ClientError
from depman.client.units import format_bytes

POLL_SECONDS = 1.0
# States a fill request waits through; `stored` and `failed` end the wait.
OPEN_STATES = frozenset({"wanted", "filling"})


def show_status(*, server_url: str, token: str | None) -> None:
    """Print the mirror's settings and totals, then every entry not stored, then the stored."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        status = client.mirror_status()
    if not status.get("configured"):
        console.print("No mirror configured (set DEPMAN_MIRROR_URL on the server).")
    else:
        console.print(describe_mirror(status))
    console.print(mirror_table(status.get("deps") or []))


def describe_mirror(status: JsonDoc) -> str:
    """Two lines: where the mirror is and what it holds."""
    totals = status.get("totals") or {}
    mode = status.get("fillMode") or "?"
    lines = [
        f"Mirror [bold]{escape(str(status.get('url')))}[/] (fill: {escape(str(mode))}); "
        f"agents fetch from {escape(str(status.get('agentHost') or '?'))}",
        f"{totals.get('stored', 0)} stored ({format_bytes(totals.get('storedBytes', 0))}), "
        f"{totals.get('filling', 0)} filling, {totals.get('wanted', 0)} waiting, "
        f"{totals.get('failed', 0)} failed, {totals.get('missing', 0)} not asked for "
        f"({format_bytes(totals.get('missingBytes', 0))} not in the mirror), "
        f"{totals.get('unmirrorable', 0)} without a sha256",
    ]
    return "\n".join(lines)


STATE_ORDER = {"failed": 0, "filling": 1, "wanted": 2, "missing": 3, "unmirrorable": 4,
               "stored": 5}


def mirror_table(entries: list[JsonDoc]) -> Table:
    """One row per catalog entry: problems first."""
    table = Table(title="Mirror", title_justify="left")
    for column in ("DEP", "STATE", "SIZE", "SHA256", "DETAIL"):
        table.add_column(column, overflow="fold")
    for entry in sorted(entries, key=lambda e: (STATE_ORDER.get(e.get("state", ""), 9),
                                                 e.get("depId", ""))):
        table.add_row(
            escape(str(entry.get("depId"))),
            escape(str(entry.get("state"))),
            format_bytes(entry.get("sizeBytes")),
            escape(str(entry.get("sha256") or "-")[:12]),
            escape(detail_of(entry)),
        )
    return table


def detail_of(entry: JsonDoc) -> str:
    """What a row needs said: progress, the error and the next try, when it was stored."""
    state = entry.get("state")
    if state == "filling":
        return f"{format_bytes(entry.get('bytesDone'))} read"
    if state == "failed":
        return (f"attempt {entry.get('attempts')}: {entry.get('error') or '?'}; "
                f"next try {entry.get('nextAttemptAt') or '?'}")
    if state == "stored":
        return f"stored {entry.get('storedAt') or ''}"
    if state == "unmirrorable":
        return "no sha256 in the catalog (or a folder model): cannot be mirrored"
    if state == "missing":
        return "not asked for (DEPMAN_MIRROR_FILL=manual)"
    return ""


def fill(dep_ids: list[str], *, wait: bool, server_url: str, token: str | None) -> None:
    """Ask for fills; with `wait`, show their progress until each is stored or failed."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        answer = client.mirror_fill(dep_ids or None)
        for dep_id, reason in (answer.get("refused") or {}).items():
            console.print(f"[yellow]{escape(dep_id)}[/]: {escape(reason)}")
        requested = answer.get("requested") or []
        if not requested:
            if answer.get("refused"):
                raise typer.Exit(1)
            console.print("Nothing to fill.")
            return
        console.print(f"Asked the server to fill {len(requested)} deps.")
        if not wait:
            return
        final = wait_for_fills(client, [str(e["depId"]) for e in requested], console)
    failed = [e for e in final if e.get("state") == "failed"]
    for entry in failed:
        console.print(f"[bold red]failed[/] {escape(str(entry.get('depId')))}: "
                      f"{escape(str(entry.get('error')))}")
    stored = len(final) - len(failed)
    console.print(f"{stored} stored in the mirror, {len(failed)} failed.")
    if failed:
        raise typer.Exit(1)


def wait_for_fills(client: AdminClient, dep_ids: list[str], console: Console) -> list[JsonDoc]:
    """Poll the status until every named dep is stored or failed; a bar per dep."""
    pause = threading.Event()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TextColumn("{task.fields[state]}"),
                  console=console, transient=False) as progress:
        tasks: dict[str, TaskID] = {}
        while True:
            entries = {str(e["depId"]): e for e in client.mirror_status().get("deps") or []}
            missing = [d for d in dep_ids if d not in entries]
            if missing:
                raise ClientError(f"deps left the catalog while filling: {', '.join(missing)}")
            chosen = [entries[d] for d in dep_ids]
            for entry in chosen:
                _show(progress, tasks, entry)
            if all(e.get("state") not in OPEN_STATES for e in chosen):
                return chosen
            pause.wait(POLL_SECONDS)


def _show(progress: Progress, tasks: dict[str, TaskID], entry: JsonDoc) -> None:
    dep_id = str(entry["depId"])
    total = entry.get("sizeBytes")
    state = str(entry.get("state"))
    done = total if state == "stored" else entry.get("bytesDone") or 0
    if dep_id not in tasks:
        tasks[dep_id] = progress.add_task(escape(dep_id), total=total, state=state)
    progress.update(tasks[dep_id], completed=done, state=state)
