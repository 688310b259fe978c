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
workflow_app = typer.Typer(
    help="ComfyUI workflows: the models they need, and importing unknown ones.",
    no_args_is_help=True,
)
app.add_typer(agent_app, name="agent")
app.add_typer(jobs_app, name="jobs")
app.add_typer(workflow_app, name="workflow")
queue_app = typer.Typer(help="Operator actions on queue items.", no_args_is_help=True)
instance_app = typer.Typer(help="Operator actions on instances.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(instance_app, name="instance")
mirror_app = typer.Typer(
    help="The fleet mirror: what it holds, and filling it.", no_args_is_help=True
)
app.add_typer(mirror_app, name="mirror")

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
    api_port: Annotated[
        int | None,
        typer.Option(
            help="A second port with a process of its own for job runners, operators and "
            "the dashboard (agents stay on --port); PostgreSQL only."
        ),
    ] = None,
) -> None:
    """Run the control plane (HTTP API, dashboard, scheduler)."""
    from depman.server.runner import serve_from_flags

    serve_from_flags(
        host=host,
        port=port,
        database_url=database_url,
        log_level=log_level,
        workers=workers,
        api_port=api_port,
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


@agent_app.command("publish")
def agent_publish(
    file: Annotated[Path, typer.Argument(help="The agent file (e.g. depman-agent.pyz).")],
    server_type: Annotated[str, typer.Option("--server-type", help="Server type to offer it to.")],
    version: Annotated[
        str | None,
        typer.Option(help="Its version [default: read from a depman agent zipapp]."),
    ] = None,
    rollout_percent: Annotated[
        int,
        typer.Option(
            "--rollout-percent", min=0, max=100, help="Share of the type's instances offered it."
        ),
    ] = 100,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Publish an agent build: agents of the type on another version update to it."""
    from depman.client.agent_builds import publish_build

    publish_build(
        file,
        server_type,
        version=version,
        rollout_percent=rollout_percent,
        server_url=server_url,
        token=token,
    )


@agent_app.command("builds")
def agent_builds(server_url: ServerOpt = DEFAULT_SERVER_URL, token: TokenOpt = None) -> None:
    """List published agent builds and how far each rollout got."""
    from depman.client.agent_builds import list_builds

    list_builds(server_url=server_url, token=token)


@agent_app.command("rollout")
def agent_rollout(
    server_type: Annotated[str, typer.Argument(help="Server type whose build to roll out.")],
    percent: Annotated[int, typer.Argument(min=0, max=100, help="Share of its instances.")],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Offer the published build to another share of the type's instances."""
    from depman.client.agent_builds import set_rollout

    set_rollout(server_type, percent, server_url=server_url, token=token)


@agent_app.command("unpublish")
def agent_unpublish(
    server_type: Annotated[str, typer.Argument(help="Server type whose build to withdraw.")],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Stop offering a server type's build (agents keep what they run)."""
    from depman.client.agent_builds import unpublish_build

    unpublish_build(server_type, server_url=server_url, token=token)


@app.command()
def onstart(
    server_type: Annotated[
        str | None,
        typer.Option("--server-type", help="This template's server type.", show_default=False),
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="DEPMAN_URL",
            help="Control-plane root URL the instances reach [default: DEPMAN_URL of the "
            "instance's environment].",
            show_default=False,
        ),
    ] = None,
    token: TokenOpt = None,
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="Print the script without asking the server."),
    ] = False,
    stop: Annotated[
        bool,
        typer.Option("--stop", help="Print the script that stops the agent and its loop."),
    ] = False,
) -> None:
    """Print a Vast.ai on-start script: fetch + sha256-check the agent, run it under restarts."""
    from depman.client.commands import print_onstart

    print_onstart(server_type, server_url, token=token, check=not no_check, stop=stop)


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
    dep = "dep"  # one catalog entry: its sources in order, which instances hold it
    jobs = "jobs"
    queue = "queue"


@app.command()
def get(
    what: Annotated[
        GetWhat, typer.Argument(help="instances, instance, deps, dep, jobs or queue.")
    ],
    instance_id: Annotated[
        str | None,
        typer.Argument(
            help="Instance id (for `instance` and `queue`), dep id (for `dep`).",
            show_default=False,
        ),
    ] = None,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Print a table of instances, deps, jobs, one instance (with receipts) or its queue,
    or one dep with its sources and the instances that hold it."""
    from depman.client.commands import print_listing

    print_listing(what.value, instance_id, server_url=server_url, token=token)


@jobs_app.command("submit")
def jobs_submit(
    server_type: Annotated[str, typer.Option("--server-type", help="Server type to run on.")],
    dep_ids: Annotated[
        list[str] | None, typer.Argument(help="Dep ids the job needs.", show_default=False)
    ] = None,
    workflow: Annotated[
        Path | None,
        typer.Option(
            "--workflow", help="ComfyUI workflow JSON: the job needs its models.", exists=True
        ),
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Own job id.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the job is ready or failed.")] = False,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Submit a job: reserve an instance and queue the deps it lacks."""
    from depman.client.commands import submit_job

    submit_job(
        server_type,
        dep_ids or [],
        job_id=job_id,
        wait=wait,
        server_url=server_url,
        token=token,
        workflow=workflow,
    )


class DepKind(StrEnum):
    """Kind of the entries `depman workflow import` adds."""

    static = "static"
    dynamic = "dynamic"


class DepAuth(StrEnum):
    """Auth of the entries `depman workflow import` adds."""

    none = "none"
    hf_token = "hf_token"
    civitai_token = "civitai_token"


WorkflowArg = Annotated[
    Path, typer.Argument(help="ComfyUI workflow JSON (UI or API format).", exists=True)
]


@workflow_app.command("deps")
def workflow_deps(
    file: WorkflowArg,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """List the model files the workflow uses and which catalog deps provide them."""
    from depman.client.workflows import show_workflow_deps

    show_workflow_deps(file, server_url=server_url, token=token)


@workflow_app.command("import")
def workflow_import(
    file: WorkflowArg,
    kind: Annotated[DepKind, typer.Option(help="Kind of the added entries.")] = DepKind.dynamic,
    auth: Annotated[DepAuth, typer.Option(help="Auth of the added entries.")] = DepAuth.none,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Add catalog entries for the workflow's unknown models that carry a url."""
    from depman.client.workflows import import_workflow_models

    import_workflow_models(
        file, kind=kind.value, auth=auth.value, server_url=server_url, token=token
    )


@jobs_app.command("get")
def jobs_get(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Show one job."""
    from depman.client.commands import show_job

    show_job(job_id, server_url=server_url, token=token)


@jobs_app.command("start")
def jobs_start(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Mark a ready job running (the job runner, before it runs the workflow)."""
    from depman.client.commands import start_job

    start_job(job_id, server_url=server_url, token=token)


@jobs_app.command("complete")
def jobs_complete(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    failed: Annotated[bool, typer.Option("--failed", help="The job failed.")] = False,
    error: Annotated[
        str | None, typer.Option("--error", help="What went wrong (with --failed).")
    ] = None,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Finish a job (completed, or failed with --failed) and free its instance's slot."""
    from depman.client.commands import complete_job

    complete_job(job_id, failed=failed, error=error, server_url=server_url, token=token)


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


InstanceArg = Annotated[str, typer.Argument(help="Instance id.")]
DepArg = Annotated[str, typer.Argument(help="Dep id.")]
ReasonOpt = Annotated[
    str, typer.Option("--reason", help="Why (the agent and the audit log see it).")
]


@mirror_app.command("status")
def mirror_status(server_url: ServerOpt = DEFAULT_SERVER_URL, token: TokenOpt = None) -> None:
    """What the mirror holds, and which deps are missing, filling or failed."""
    from depman.client.mirror import show_status

    show_status(server_url=server_url, token=token)


@mirror_app.command("fill")
def mirror_fill(
    dep_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Deps to fill (default: every catalog entry).", show_default=False),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait until each is stored or failed, showing progress.")
    ] = False,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Ask the server to copy deps into the mirror now (failed ones again)."""
    from depman.client.mirror import fill

    fill(dep_ids or [], wait=wait, server_url=server_url, token=token)


@queue_app.command("cancel")
def queue_cancel(
    instance_id: InstanceArg,
    dep_id: DepArg,
    reason: ReasonOpt = "cancelled by operator",
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Cancel a queue item (queued: at once; running: when the agent confirms)."""
    from depman.client.actions import cancel_item

    cancel_item(instance_id, dep_id, reason, server_url=server_url, token=token)


@queue_app.command("retry")
def queue_retry(
    instance_id: InstanceArg,
    dep_id: DepArg,
    after_ms: Annotated[
        int | None, typer.Option("--after-ms", help="Let the agent wait this long first.")
    ] = None,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Retry a failed (or backing-off) item now, despite the agent's local backoff."""
    from depman.client.actions import retry_item

    retry_item(instance_id, dep_id, after_ms, server_url=server_url, token=token)


@instance_app.command("delete-dep")
def instance_delete_dep(
    instance_id: InstanceArg,
    dep_id: DepArg,
    force: Annotated[
        bool, typer.Option("--force", help="Also a static dep, or one a job needs.")
    ] = False,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Remove a dep's file from an instance (the agent deletes it and heartbeats)."""
    from depman.client.actions import delete_dep

    delete_dep(instance_id, dep_id, force, server_url=server_url, token=token)


@instance_app.command("drain")
def instance_drain(
    instance_id: InstanceArg,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Place no new jobs on an instance; the ones it has finish there."""
    from depman.client.actions import drain

    drain(instance_id, True, server_url=server_url, token=token)


@instance_app.command("undrain")
def instance_undrain(
    instance_id: InstanceArg,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Let an instance take new jobs again."""
    from depman.client.actions import drain

    drain(instance_id, False, server_url=server_url, token=token)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    reason: ReasonOpt = "cancelled by operator",
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Cancel an open job (it fails with the reason; its instance takes the next one)."""
    from depman.client.actions import cancel_job

    cancel_job(job_id, reason, server_url=server_url, token=token)


@app.command()
def audit(
    instance_id: Annotated[
        str | None, typer.Option("--instance", help="Only actions on this instance.")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job", help="Only actions on this job.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    server_url: ServerOpt = DEFAULT_SERVER_URL,
    token: TokenOpt = None,
) -> None:
    """Print the operator audit log: who did what, to what, when."""
    from depman.client.actions import show_actions

    show_actions(instance_id, job_id, limit, server_url=server_url, token=token)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
