"""The `depman` command line: subcommands only; the work lives in the packages they call."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="depman: model dependency manager for ComfyUI GPU fleets.", no_args_is_help=True
)
agent_app = typer.Typer(help="The node agent (standard library only).")
jobs_app = typer.Typer(help="Submit and inspect jobs.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(jobs_app, name="jobs")

ServerOpt = Annotated[
    str,
    typer.Option("--server", envvar="DEPMAN_URL", help="Control-plane root URL."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="DEPMAN_ADMIN_TOKEN", help="Admin token.", show_default=False),
]
DEFAULT_SERVER_URL = "http://127.0.0.1:8787"


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Bind address [default 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port, 0 for any [default 8787].")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL [env DEPMAN_DATABASE_URL, default sqlite:///./depman.db]."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Server processes, PostgreSQL only [default 1].")
    ] = None,
) -> None:
    """Run the control plane (HTTP API, dashboard, scheduler)."""
    from depman.server.runner import serve_from_flags

    serve_from_flags(
        host=host, port=port, database_url=database_url, log_level=log_level, workers=workers
    )


@agent_app.callback(invoke_without_command=True)
def agent(ctx: typer.Context) -> None:
    """Run the node agent on this instance (configured by env vars, see docs/agent.md)."""
    if ctx.invoked_subcommand is None:
        from depman.agent.main import main as agent_main

        raise typer.Exit(agent_main([]))


@agent_app.command("bundle")
def agent_bundle(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the zipapp.")
    ] = Path("depman-agent.pyz"),
) -> None:
    """Write the one-file agent (`python3 depman-agent.pyz`)."""
    from depman.agent.bundle import write_bundle

    digest = write_bundle(output)
    typer.echo(f"wrote {output} sha256={digest}")


@app.command()
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="Fleet YAML file.", exists=True)],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Upsert a declarative fleet file: deps, profiles, server types, instances."""
    from depman.client.commands import apply_fleet

    apply_fleet(file, server_url=server_url, token=token)


class GetWhat(StrEnum):
    """What `depman get` lists."""

    instances = "instances"
    instance = "instance"  # one instance, with its verification receipts
    deps = "deps"
    jobs = "jobs"
    queue = "queue"


@app.command()
def get(
    what: Annotated[GetWhat, typer.Argument(help="instances, instance, deps, jobs or queue.")],
    instance_id: Annotated[
        str | None,
        typer.Argument(help="Instance id (for `instance` and `queue`).", show_default=False),
    ] = None,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Print a table of instances, deps, jobs, one instance (with receipts) or its queue."""
    from depman.client.commands import print_listing

    print_listing(what.value, instance_id, server_url=server_url, token=token)


@jobs_app.command("submit")
def jobs_submit(
    dep_ids: Annotated[list[str], typer.Argument(help="Dep ids the job needs.")],
    server_type: Annotated[str, typer.Option("--server-type", help="Server type to run on.")],
    job_id: Annotated[str | None, typer.Option("--job-id", help="Own job id.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the job is ready or failed.")] = False,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Submit a job: reserve an instance and queue the deps it lacks."""
    from depman.client.commands import submit_job

    submit_job(server_type, dep_ids, job_id=job_id, wait=wait, server_url=server_url, token=token)


@jobs_app.command("get")
def jobs_get(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Show one job."""
    from depman.client.commands import show_job

    show_job(job_id, server_url=server_url, token=token)


@app.command()
def demo(
    keep_running: Annotated[
        bool, typer.Option(help="Keep the fleet up afterwards and print the dashboard URL.")
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="Folder for the demo's files (default: a temp folder).")
    ] = None,
) -> None:
    """Run a whole fleet on this machine: server, model origin, two agents, jobs."""
    from depman.demo.runner import run_demo

    raise typer.Exit(run_demo(keep_running=keep_running, workdir=workdir))


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
