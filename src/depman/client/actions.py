"""What the operator-action commands do (`depman queue`, `depman instance`, `depman jobs cancel`,
`depman audit`); `depman.cli` only parses flags."""

from __future__ import annotations

import getpass
import socket
from urllib.parse import quote

from rich.table import Table

from depman.client.api import AdminClient, JsonDoc
from depman.client.console import make_console, open_client, reported_errors
from depman.client.tables import state_text


def default_actor() -> str:
    """`user@host`, recorded by the server as who acted."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def segment(value: str) -> str:
    """One URL path segment: ids never turn into extra path levels."""
    return quote(value, safe="")


def _client(server_url: str, token: str | None) -> AdminClient:
    return open_client(server_url, token, actor=default_actor())


def _run(path: str, body: JsonDoc, done: str, *, server_url: str, token: str | None) -> None:
    console = make_console()
    with reported_errors(), _client(server_url, token) as client:
        answer = client.act(path, body)
    state = answer.get("state")
    console.print(done + (f" (now {state})" if state else ""))


def cancel_item(
    instance_id: str, dep_id: str, reason: str, *, server_url: str, token: str | None
) -> None:
    """Cancel one queue item."""
    _run(
        f"/admin/queues/{segment(instance_id)}/items/{segment(dep_id)}/cancel",
        {"reason": reason},
        f"cancelled {dep_id} on {instance_id}",
        server_url=server_url,
        token=token,
    )


def retry_item(
    instance_id: str, dep_id: str, after_ms: int | None, *, server_url: str, token: str | None
) -> None:
    """Retry a failed (or backing-off) queue item now."""
    body: JsonDoc = {} if after_ms is None else {"afterMs": after_ms}
    _run(
        f"/admin/queues/{segment(instance_id)}/items/{segment(dep_id)}/retry",
        body,
        f"retrying {dep_id} on {instance_id}",
        server_url=server_url,
        token=token,
    )


def delete_dep(
    instance_id: str, dep_id: str, force: bool, *, server_url: str, token: str | None
) -> None:
    """Queue the removal of a dep's file on an instance."""
    _run(
        f"/admin/instances/{segment(instance_id)}/deps/{segment(dep_id)}/delete",
        {"force": force},
        f"queued delete of {dep_id} on {instance_id}",
        server_url=server_url,
        token=token,
    )


def drain(instance_id: str, drained: bool, *, server_url: str, token: str | None) -> None:
    """Drain or reopen an instance."""
    _run(
        f"/admin/instances/{segment(instance_id)}/drain",
        {"drained": drained},
        f"{'drained' if drained else 'reopened'} {instance_id}",
        server_url=server_url,
        token=token,
    )


def cancel_job(job_id: str, reason: str, *, server_url: str, token: str | None) -> None:
    """Cancel an open job."""
    _run(
        f"/admin/jobs/{segment(job_id)}/cancel",
        {"reason": reason},
        f"cancelled job {job_id}",
        server_url=server_url,
        token=token,
    )


def show_actions(
    instance_id: str | None, job_id: str | None, limit: int, *, server_url: str, token: str | None
) -> None:
    """Print the audit log."""
    console = make_console()
    with reported_errors(), _client(server_url, token) as client:
        rows = client.list_actions(instance_id=instance_id, job_id=job_id, limit=limit)
    console.print(actions_table(rows))


def actions_table(rows: list[JsonDoc]) -> Table:
    """The audit log as a table, newest first."""
    table = Table(title=f"Operator actions ({len(rows)})", title_justify="left")
    for name in ("AT", "WHO", "ACTION", "INSTANCE", "DEP", "JOB", "DETAIL"):
        table.add_column(name, no_wrap=name != "DETAIL", overflow="fold")
    for row in rows:
        detail = row.get("detail") or {}
        table.add_row(
            str(row.get("at") or "-"),
            str(row.get("actor") or "-"),
            state_text(row.get("action")),
            str(row.get("instanceId") or "-"),
            str(row.get("depId") or "-"),
            str(row.get("jobId") or "-"),
            ", ".join(f"{k}={v}" for k, v in sorted(detail.items())) or "-",
        )
    return table
