"""What a hand-written SQL statement writes, declared for those who watch writes.

Statements built with SQLAlchemy name their table, the columns they set and the
keys in their WHERE clause; the server reads those to drop the memos a commit made
stale (`depman.server.cache.invalidation`). A `text()` write names nothing the
server can read reliably but its table, so it declares the rest here; an
undeclared one is taken as writing every row of its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.sql.expression import TextClause

WRITES_OPTION = "depman_writes"
Statement = TypeVar("Statement", bound=TextClause)


@dataclass(frozen=True)
class DeclaredWrites:
    """The columns a statement sets (None: whole rows) and the parameter naming its rows' key."""

    columns: tuple[str, ...] | None = None
    key_param: str | None = None


def declare_writes(
    statement: Statement, *, columns: Sequence[str] | None = None, key_param: str | None = None
) -> Statement:
    """`statement`, declaring what it writes (see the module docstring)."""
    declared = DeclaredWrites(tuple(columns) if columns is not None else None, key_param)
    return statement.execution_options(**{WRITES_OPTION: declared})
