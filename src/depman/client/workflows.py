"""`depman workflow deps|import` and reading workflow files for `depman jobs submit`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from depman.client.api import JsonDoc
from depman.client.catalog_checks import hosts_outside_default, warn_about
from depman.client.console import make_console, open_client, reported_errors
from depman.client.errors import ClientError

# The server refuses workflows nested deeper than this; ComfyUI saves about ten levels.
MAX_JSON_DEPTH = 64
# A JSON string (skipped whole) or one bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_depth(text: str, limit: int) -> int:
    """How deep the brackets of a JSON text nest, counted up to `limit + 1`.

    A scan, not a parse: the parser recurses once per level and a file nested
    thousands deep would end it with a RecursionError instead of an error line.
    """
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def read_workflow(path: Path) -> JsonDoc:
    """A workflow file's JSON object; ClientError naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"{path}: cannot read: {exc}", code="invalid_workflow") from exc
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ClientError(
            f"{path}: not a workflow: JSON nested deeper than {MAX_JSON_DEPTH} levels",
            code="invalid_workflow",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", code="invalid_workflow"
        ) from exc
    if not isinstance(data, dict):
        raise ClientError(f"{path}: a workflow is a JSON object", code="invalid_workflow")
    return data


def models_table(title: str, models: list[JsonDoc]) -> Table:
    """TYPE, FILE, DEPS (or `unknown`), and where it can be downloaded from."""
    table = Table(title=title or None, title_justify="left")
    table.add_column("TYPE", no_wrap=True)
    table.add_column("FILE", overflow="fold", style="bold")
    table.add_column("DEP", overflow="fold")
    table.add_column("URL", overflow="fold")
    for model in models:
        deps = model.get("depIds") or []
        table.add_row(
            escape(str(model.get("type") or "?")),
            escape(str(model.get("filename"))),
            escape(", ".join(map(str, deps))) if deps else "[red]unknown[/]",
            escape(str(model.get("url") or "-")),
        )
    return table


def show_workflow_deps(path: Path, *, server_url: str, token: str | None) -> None:
    """Print the workflow's models and which catalog deps provide them."""
    console = make_console()
    with reported_errors():
        workflow = read_workflow(path)
        with open_client(server_url, token) as client:
            answer = client.workflow_deps(workflow)
    models = list(answer.get("models") or [])
    unknown = list(answer.get("unknown") or [])
    console.print(f"{escape(path.name)}: {len(models)} model files")
    if not models:
        return
    console.print(models_table("", models))
    if unknown:
        importable = sum(1 for m in unknown if m.get("url") and m.get("type"))
        console.print(
            f"{len(unknown)} not in the catalog ({importable} with a url: "
            f"`depman workflow import {escape(str(path))}` adds them)"
        )
    else:
        console.print("every model is in the catalog")


def import_workflow_models(
    path: Path, *, kind: str, auth: str, server_url: str, token: str | None
) -> None:
    """Add catalog entries for the workflow's unknown models; print what was done."""
    console = make_console()
    with reported_errors():
        workflow = read_workflow(path)
        with open_client(server_url, token) as client:
            answer = client.import_workflow(workflow, kind=kind, auth=auth)
    created = list(answer.get("created") or [])
    skipped = list(answer.get("skipped") or [])
    for model in created:
        note = " [yellow](unverified: no sha256)[/]" if model.get("unverified") else ""
        console.print(
            f"added [bold]{escape(str(model.get('depId')))}[/]: "
            f"{escape(str(model.get('type')))}/{escape(str(model.get('filename')))}{note}"
        )
    for model in skipped:
        console.print(
            f"[yellow]skipped[/] {escape(str(model.get('type') or '?'))}/"
            f"{escape(str(model.get('filename')))}: {escape(str(model.get('reason')))}"
        )
    known = len(answer.get("known") or [])
    console.print(f"{len(created)} added, {len(skipped)} skipped, {known} already in the catalog")
    unverified = [str(m.get("depId")) for m in created if m.get("unverified")]
    outside = hosts_outside_default(
        (str(m.get("depId")), [str(m["downloadUrl"])]) for m in created if m.get("downloadUrl")
    )
    warn_about(console, unverified, outside)
    if skipped:
        # A job needing a skipped model cannot be placed: not a success for a script.
        raise typer.Exit(1)
