"""What `depman agent publish|builds|rollout|unpublish` do: agent builds per server type."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from depman.client.api import JsonDoc
from depman.client.console import make_console, open_client, reported_errors
from depman.client.errors import ClientError
from depman.client.units import format_bytes

SHA_SHOWN = 12


def builds_table(builds: list[JsonDoc]) -> Table:
    """One row per server type with a published build, and how far its rollout got."""
    table = Table(title="Agent builds", title_justify="left")
    for column in ("server type", "version", "sha256", "size", "rollout", "on target",
                   "offered", "published"):
        table.add_column(column)
    for build in builds:
        instances = build.get("instances")
        on_target = build.get("onTarget")
        table.add_row(
            escape(str(build.get("serverType", "-"))),
            escape(str(build.get("version", "-"))),
            str(build.get("sha256", ""))[:SHA_SHOWN] or "-",
            format_bytes(build.get("sizeBytes")),
            f"{build.get('rolloutPercent', '-')}%",
            f"{on_target}/{instances}" if instances is not None else "-",
            str(build.get("offered", "-")),
            escape(str(build.get("publishedAt") or "-")),
        )
    return table


def publish_build(
    file: Path,
    server_type: str,
    *,
    version: str | None,
    rollout_percent: int,
    server_url: str,
    token: str | None,
) -> None:
    """Upload FILE as the agent build of SERVER_TYPE and print what agents will be offered."""
    console = make_console()
    with reported_errors():
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {file}: {exc.strerror or exc}") from exc
        with open_client(server_url, token) as client:
            build = client.publish_agent_build(
                server_type, data, version=version, rollout_percent=rollout_percent
            )
        console.print(
            f"Published {escape(str(file))} for server type {escape(server_type)}: version "
            f"{escape(str(build.get('version')))}, sha256 {build.get('sha256')}, rollout "
            f"{build.get('rolloutPercent')}% ({build.get('offered', 0)} of "
            f"{build.get('instances', 0)} instances offered it now)."
        )


def list_builds(*, server_url: str, token: str | None) -> None:
    """Print every published build."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        console.print(builds_table(client.list_agent_builds()))


def set_rollout(server_type: str, percent: int, *, server_url: str, token: str | None) -> None:
    """Change the share of SERVER_TYPE's instances offered its build."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        build = client.set_agent_rollout(server_type, percent)
    console.print(
        f"Build {escape(str(build.get('version')))} of {escape(server_type)} now offered to "
        f"{percent}% ({build.get('offered', 0)} of {build.get('instances', 0)} instances)."
    )


def unpublish_build(server_type: str, *, server_url: str, token: str | None) -> None:
    """Stop offering SERVER_TYPE's build (agents keep what they run)."""
    console = make_console()
    with reported_errors(), open_client(server_url, token) as client:
        client.unpublish_agent_build(server_type)
    console.print(f"Unpublished the agent build of {escape(server_type)}.")
