"""What every CLI command shares: the console, the admin client, and one way to report errors.

A command prints a `ClientError` as one clear message on stderr and exits 1; a
traceback means a bug in depman, never bad input or a refused request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from depman.client.api import AdminClient
from depman.client.errors import ClientError

# Rich wraps to 80 columns when not writing to a terminal; tables piped to grep
# or a file should keep one row per line.
PIPE_WIDTH = 200


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
