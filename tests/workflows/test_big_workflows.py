"""Big and hostile workflows: parsed in linear time, bounded, and never inside the writer.

The parse and the catalog match run before the job's write session opens. The
tests prove it on SQLite by holding the database's write lock from another
connection (`BEGIN IMMEDIATE`, as a long write transaction would) while they
submit: the answers come back while the lock is still held.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from depman.core.workflows import MAX_WORKFLOW_DEPTH, MAX_WORKFLOW_MODELS, workflow_models
from depman.errors import ValidationFailed
from tests.support.server import RunningServer, run_server

SERVER_TYPE = "wf-big"
KNOWN = ["known-a", "known-b", "known-c"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("big-workflows")
    with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp) as running:
        for name in KNOWN:
            doc = {
                "url": f"https://example.invalid/{name}.safetensors",
                "type": "loras",
                "filename": f"{name}.safetensors",
                "kind": "dynamic",
            }
            status, body = running.admin("PUT", f"/admin/deps/{name}", doc)
            assert status == 200, body
        status, body = running.admin("PUT", f"/admin/server-types/{SERVER_TYPE}", {})
        assert status == 200, body
        yield running


@contextmanager
def write_lock_held(server: RunningServer) -> Iterator[None]:
    """The SQLite write lock, taken by another connection for the duration."""
    path = server.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def untyped_names(count: int) -> dict[str, Any]:
    """A UI workflow whose custom nodes name `count` model files (untyped references)."""
    nodes = [
        {"id": i, "type": "SomeCustomLoader", "widgets_values": [f"model-{i:06d}.safetensors"]}
        for i in range(count)
    ]
    return {"nodes": nodes}


def many_nodes_few_files(count: int) -> dict[str, Any]:
    """`count` loader nodes and as many custom nodes, all naming the three known files."""
    nodes: list[dict[str, Any]] = []
    for i in range(count):
        name = f"{KNOWN[i % 3]}.safetensors"
        nodes.append({"id": 2 * i, "type": "LoraLoader", "widgets_values": [name, 1.0, 1.0]})
        nodes.append({"id": 2 * i + 1, "type": f"Custom{i}", "widgets_values": [name]})
    return {"nodes": nodes}


def submit(server: RunningServer, workflow: dict[str, Any]) -> tuple[int, Any]:
    return server.admin("POST", "/jobs", {"serverType": SERVER_TYPE, "workflow": workflow})


def test_20000_names_are_refused_with_a_clear_422_while_the_writer_is_busy(
    server: RunningServer,
) -> None:
    workflow = untyped_names(20_000)
    limit = f"more than {MAX_WORKFLOW_MODELS} model files"
    with write_lock_held(server):
        status, body = submit(server, workflow)
        assert status == 422 and limit in body["error"]["message"], body
        for path in ("/admin/workflows/deps", "/admin/workflows/import"):
            status, body = server.admin("POST", path, {"workflow": workflow})
            assert status == 422 and limit in body["error"]["message"], (path, body)


def test_a_workflow_at_the_bound_is_parsed_and_matched_outside_the_writer(
    server: RunningServer,
) -> None:
    workflow = untyped_names(MAX_WORKFLOW_MODELS)
    with write_lock_held(server):
        # Every file is unknown: the answer needs the parse and the catalog, not the writer.
        status, body = submit(server, workflow)
        assert status == 422, body
        assert "catalog does not have" in body["error"]["message"]
        assert f"and {MAX_WORKFLOW_MODELS - 10} more" in body["error"]["message"]
        status, body = server.admin("POST", "/admin/workflows/deps", {"workflow": workflow})
        assert status == 200 and len(body["unknown"]) == MAX_WORKFLOW_MODELS


def test_20000_nodes_naming_known_files_become_a_job(server: RunningServer) -> None:
    status, job = submit(server, many_nodes_few_files(20_000))
    assert status == 200, job
    assert sorted(job["depIds"]) == KNOWN
    status, body = server.admin(
        "POST", "/admin/workflows/deps", {"workflow": many_nodes_few_files(100)}
    )
    assert status == 200
    # The custom node types that name a file are kept, up to a bound.
    assert all(len(model["nodeTypes"]) <= 20 for model in body["models"])


def test_deep_workflow_bodies_are_refused_not_500(server: RunningServer) -> None:
    nested: Any = {"x": 1}
    for _ in range(200):
        nested = {"x": nested}
    status, body = submit(server, {"nodes": [], "extra": nested})
    assert status == 422, body
    assert f"deeper than {MAX_WORKFLOW_DEPTH} levels" in body["error"]["message"]
    # Deeper than the JSON parser goes: a refusal of the body, never a 500.
    deep = b'{"serverType": "wf-big", "workflow": {"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    status, body = server.request(
        "POST",
        "/api/jobs",
        raw_body=deep,
        headers={
            "Authorization": f"Bearer {server.admin_token}",
            "Content-Type": "application/json",
        },
    )
    assert status in (400, 422), body


def test_typed_reference_replaces_the_untyped_one_of_the_same_file() -> None:
    workflow = {
        "nodes": [
            {"id": 1, "type": "Custom", "widgets_values": ["a.safetensors"]},
            {"id": 2, "type": "LoraLoader", "widgets_values": ["a.safetensors", 1, 1]},
            {"id": 3, "type": "Other", "widgets_values": ["a.safetensors"]},
        ]
    }
    [ref] = workflow_models(workflow)
    assert ref.key == ("loras", "a.safetensors") and ref.node_types == ["LoraLoader"]
    with pytest.raises(ValidationFailed, match="more than"):
        workflow_models(untyped_names(MAX_WORKFLOW_MODELS + 1))


@pytest.mark.parametrize(
    "command", [["workflow", "deps"], ["jobs", "submit", "--server-type", "x"]]
)
def test_cli_refuses_json_nested_10000_deep_in_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"nodes": [], "x": ' + "[" * 10_000 + "]" * 10_000 + "}")
    args = (
        [*command, str(path)] if command[0] == "workflow" else [*command, "--workflow", str(path)]
    )
    result = subprocess.run(
        [sys.executable, "-m", "depman", *args],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "DEPMAN_URL": "http://127.0.0.1:9",
            "DEPMAN_ADMIN_TOKEN": "t",
        },
        timeout=60,
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "nested deeper than 64 levels" in lines[0]
