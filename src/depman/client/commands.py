"""What `depman apply`, `depman get` and `depman jobs` do; `depman.cli` only parses flags.

Errors are reported through `depman.client.console.reported_errors`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape

from depman.client import tables
from depman.client.api import AdminClient, JsonDoc
from depman.client.catalog_checks import check_hosts
from depman.client.console import make_console, open_client, reported_errors
from depman.client.errors import ClientError, FleetFileError
from depman.client.fleet import FleetFile, line_of, load_fleet
from depman.client.workflows import read_workflow

JOB_WAIT_SECONDS = 25.0
# A job in one of these states needs no more waiting for `jobs submit --wait`.
SETTLED_JOB_STATES = frozenset({"ready", "running", "completed", "failed"})
SECTION_NOUNS = {
    "deps": ("dep", "deps"),
    "profiles": ("profile", "profiles"),
    "serverTypes": ("server type", "server types"),
    "instances": ("instance", "instances"),
}


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
            applied = set(fleet_file.fleet.deps)
            stored = [d for d in client.list_deps() if d.get("depId") in applied] if applied else []
        summary = ", ".join(
            f"{counts.get(section, 0)} {SECTION_NOUNS[section][counts.get(section) != 1]}"
            for section in SECTION_NOUNS
        )
        console.print(f"Applied {escape(str(file))} to {escape(client.base_url)}: {summary}.")
        # The server warns about what it stored (no sha256); the hosts are the agents' rule.
        for warning in counts.get("warnings") or []:
            console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}")
        check_hosts(console, stored)


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
    if what == "dep" and not instance_id:
        raise typer.BadParameter("`depman get dep` needs a DEP_ID", param_hint="DEP_ID")
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
        elif what == "dep" and instance_id:
            dep = client.get_document("deps", instance_id)
            if dep is None:
                raise ClientError(f"dep {instance_id!r} does not exist", status=404)
            console.print(tables.deps_table([dep]))
            console.print(tables.sources_table(dep))
            console.print(tables.locations_table(instance_id, client.dep_locations(instance_id)))
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


def start_job(job_id: str, *, server_url: str, token: str | None) -> None:
    """Mark a ready job running and print it."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        job = client.start_job(job_id)
        console.print(describe_receipt(job))


def complete_job(
    job_id: str, *, failed: bool, error: str | None, server_url: str, token: str | None
) -> None:
    """Finish a job (completed, or failed with its error) and print it."""
    console = make_console()
    with reported_errors():
        if error and not failed:
            raise ClientError("--error goes with --failed (a completed job has no error)")
        with open_client(server_url, token) as client:
            job = client.complete_job(job_id, ok=not failed, error=error)
            line = describe_receipt(job)
            if job.get("error"):
                line += f": {escape(str(job['error']))}"
            console.print(line)


def print_onstart(
    server_type: str | None, server_url: str | None, *, token: str | None, check: bool, stop: bool
) -> None:
    """Print the on-start script of a server type the server knows (or the stop script)."""
    from depman.client.onstart import check_server_type, onstart_script, stop_script

    if stop:
        typer.echo(stop_script(), nl=False)
        return
    if not server_type:
        raise typer.BadParameter("give the template's server type", param_hint="--server-type")
    if check:
        with reported_errors():
            if not server_url:
                raise ClientError(
                    "give --server URL (or DEPMAN_URL) so the server type can be checked, "
                    "or pass --no-check"
                )
            if not token:
                raise ClientError(
                    "no admin token to ask the server whether the server type exists: set "
                    "DEPMAN_ADMIN_TOKEN (or pass --token), or pass --no-check",
                    code="missing_token",
                )
            with open_client(server_url, token) as client:
                check_server_type(client, server_type)
    typer.echo(onstart_script(server_type, server_url), nl=False)
