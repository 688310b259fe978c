"""The migration chain: one head, and each file's number is its revision."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from depman.store.migrate import alembic_config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def test_one_head() -> None:
    """Two migrations written in parallel must be chained, not left as two heads."""
    assert len(_scripts().get_heads()) == 1


def test_file_numbers_are_revisions() -> None:
    for script in _scripts().walk_revisions():
        assert script.path is not None
        assert Path(script.path).name.split("_", 1)[0] == script.revision
