"""What `depman apply`, `depman get` and `depman jobs` do; `depman.cli` only parses flags.

Each command prints a `ClientError` as one clear message on stderr and exits 1;
a traceback means a bug in depman, never bad input or a refused request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from depman.client import tables
from depman.client.api import AdminClient, JsonDoc
from depman.client.errors import ClientError, FleetFileError
from depman.client.fleet import FleetFile, line_of, load_fleet

# Rich wraps to 80 columns when not writing to a terminal; tables piped to grep
# or a file should keep one row per line.
PIPE_WIDTH = 200
JOB_WAIT_SECONDS = 25.0
# A job in one of these states needs no more waiting for `jobs submit --wait`.
SETTLED_JOB_STATES = frozenset({"ready", "running", "completed", "failed"})
SECTION_NOUNS = {
    "deps": ("dep", "deps"),
    "profiles": ("profile", "profiles"),
    "serverTypes": ("server type", "server types"),
    "instances": ("instance", "instances"),
}


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr) that does not squeeze tables when piped."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=PIPE_WIDTH)
    return console


@contextmanager
def reported_errors() -> Iterator[None]:
    """Print a ClientError on stderr and exit 1; Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except ClientError as exc:
        make_console(stderr=True).print(f"[bold red]error:[/] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def open_client(server_url: str, token: str | None, *, actor: str | None = None) -> AdminClient:
    """An AdminClient, or a ClientError telling how to give the missing token."""
    if not token:
        raise ClientError(
            "no admin token: set DEPMAN_ADMIN_TOKEN (or pass --token)", code="missing_token"
        )
    return AdminClient(server_url, token, actor=actor)


def apply_fleet(file: Path, *, server_url: str, token: str | None) -> None:
    """Validate a fleet file, then upsert all its documents in one transaction."""
    console = make_console()
    with reported_errors():
        fleet_file = load_fleet(file)
        with open_client(server_url, token) as client:
            check_references(client, fleet_file)
            try:
                counts = client.apply_fleet(fleet_file.fleet.to_body())
            except ClientError as exc:
                exc.message = locate_server_error(fleet_file, exc.message)
                raise
        summary = ", ".join(
            f"{counts.get(section, 0)} {SECTION_NOUNS[section][counts.get(section) != 1]}"
            for section in SECTION_NOUNS
        )
        console.print(f"Applied {escape(str(file))} to {escape(client.base_url)}: {summary}.")


def locate_server_error(fleet_file: FleetFile, message: str) -> str:
    """Prefix the file and line to a server message that starts `<section>.<id>: `."""
    for section, doc_id, _ in fleet_file.fleet.documents():
        if message.startswith(f"{section}.{doc_id}: "):
            line = line_of(fleet_file.root, (section, doc_id))
            return f"{fleet_file.path}:{line}: {message}\nnothing was applied"
    return message


def check_references(client: AdminClient, fleet_file: FleetFile) -> None:
    """Every document the file names but does not declare must already exist on the server."""
    external, _ = fleet_file.fleet.references()
    problems: list[str] = []
    known: dict[tuple[str, str], bool] = {}
    for ref in external:
        key = (ref.section, ref.target_id)
        if key not in known:
            known[key] = client.get_document(ref.section, ref.target_id) is not None
        if not known[key]:
            noun = SECTION_NOUNS[ref.section][0]
            problems.append(
                f"{fleet_file.describe(ref.loc)}: {noun} {ref.target_id!r} is neither in this "
                "file nor on the server"
            )
    if problems:
        raise FleetFileError(str(fleet_file.path), problems)


def print_listing(
    what: str, instance_id: str | None, *, server_url: str, token: str | None
) -> None:
    """Print a table of instances, deps, jobs (of one instance, if given) or one queue."""
    console = make_console()
    if what == "instance" and not instance_id:
        raise typer.BadParameter(
            "`depman get instance` needs an INSTANCE_ID", param_hint="INSTANCE_ID"
        )
    if what == "instance":
        what = "instances"
    if what == "queue" and not instance_id:
        raise typer.BadParameter(
            "`depman get queue` needs an INSTANCE_ID", param_hint="INSTANCE_ID"
        )
    if what == "deps" and instance_id:
        raise typer.BadParameter("`depman get deps` takes no INSTANCE_ID", param_hint="INSTANCE_ID")
    with reported_errors(), open_client(server_url, token) as client:
        if what == "instances":
            if instance_id:
                instance = client.get_instance(instance_id)
                if instance is None:
                    raise ClientError(f"instance {instance_id!r} does not exist", status=404)
                console.print(tables.instances_table([instance]))
                console.print(tables.receipts_table(instance))
                items = client.list_queue_items(instance_id)
                console.print(tables.queue_table(instance_id, items))
            else:
                console.print(tables.instances_table(client.list_instances()))
        elif what == "deps":
            console.print(tables.deps_table(client.list_deps()))
        elif what == "jobs":
            console.print(tables.jobs_table(client.list_jobs(instance_id=instance_id)))
        elif what == "queue" and instance_id:
            items = client.list_queue_items(instance_id)
            console.print(tables.queue_table(instance_id, items))
        else:
            raise typer.BadParameter(f"cannot list {what!r}")


def submit_job(
    server_type: str,
    dep_ids: list[str],
    *,
    job_id: str | None,
    wait: bool,
    server_url: str,
    token: str | None,
    workflow: Path | None = None,
) -> None:
    """Submit a job; with `wait`, follow it until it is ready (exit 0) or failed (exit 1)."""
    from depman.client.workflows import read_workflow

    console = make_console()
    with reported_errors():
        document = read_workflow(workflow) if workflow is not None else None
        if document is None and not dep_ids:
            raise ClientError("give the deps the job needs, or --workflow FILE.json")
    with reported_errors(), open_client(server_url, token) as client:
        receipt = client.submit_job(server_type, dep_ids, job_id=job_id, workflow=document)
        console.print(describe_receipt(receipt))
        if not wait:
            return
        job = wait_for_job(client, receipt, echo=console.print)
        console.print(tables.job_table(job))
        if job.get("state") == "failed":
            raise typer.Exit(1)


def describe_receipt(receipt: JsonDoc) -> str:
    """One line about a submitted job."""
    job_id = escape(str(receipt.get("jobId", "?")))
    state = escape(str(receipt.get("state", "?")))
    instance = receipt.get("instanceId")
    missing = [str(d) for d in receipt.get("missingDepIds") or []]
    where = f" on {escape(str(instance))}" if instance else " (no instance reserved yet)"
    line = f"Job [bold]{job_id}[/]: {state}{where}"
    if missing:
        line += f"; downloading {escape(', '.join(missing))}"
    return line


def wait_for_job(client: AdminClient, job: JsonDoc, *, echo: Callable[[str], None]) -> JsonDoc:
    """Long-poll a job until its state is settled; echo each change of state."""
    job_id = str(job["jobId"])
    last = (job.get("state"), job.get("instanceId"))
    while job.get("state") not in SETTLED_JOB_STATES:
        seen = job.get("state")
        job = client.get_job(
            job_id, wait_seconds=JOB_WAIT_SECONDS, seen_state=str(seen) if seen else None
        )
        now = (job.get("state"), job.get("instanceId"))
        if now != last:
            echo(describe_receipt(job))
            last = now
    return job


def show_job(job_id: str, *, server_url: str, token: str | None) -> None:
    """Print one job with its placement history."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        console.print(tables.job_table(client.get_job(job_id)))
