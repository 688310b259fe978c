"""Memos dropped by what transactions actually wrote: no write path marks anything.

Every write reaches the database through a connection, so it is read there:

- the ORM's unit of work: `after_flush` reads the objects it wrote (new ones,
  the columns changed on dirty ones, deleted ones), and the statement hook
  leaves the flush's own statements to it;
- every other INSERT, UPDATE or DELETE, Core or bulk ORM: `after_cursor_execute`
  reads the statement's table, the columns it sets and the keys its WHERE clause
  names (`instance_id = …`, `instance_id IN (…)`); a statement that wrote no row
  changes nothing;
- hand-written SQL (`text()`) names its table; what else it writes it declares
  (`depman.store.writes`), and an undeclared one counts as writing every row.

`changes.py` turns each write into what it makes stale. The changes wait on the
connection until its transaction commits (a rollback drops them) and are applied
when the connection goes back to the pool, after the commit: a memo is never
dropped before the write it depends on is visible, so a reader that raced the
write cannot keep the old value (the memos' epoch check). Autocommit connections
(the quick engine) commit each statement: their changes count at once. The
other replicas get the same changes through NOTIFY (`notify.py`).

The hooks cost a few attribute reads per statement: a SELECT returns at the
first check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    Grouping,
    TextClause,
)

from depman.server.cache.changes import KEY_COLUMNS, Changes, record_write
from depman.store.writes import WRITES_OPTION, DeclaredWrites

PENDING = "depman_changes_pending"  # written in the open transaction
COMMITTED = "depman_changes_committed"  # committed, applied at check-in
SQLITE_CHANGES = "depman_sqlite_changes"  # the change counter before a RETURNING statement
SQLITE_MAYBE = "depman_sqlite_maybe"  # (counter before, changes) decided at commit
FLUSHING = "depman_flushing"  # the session whose unit of work may run on this connection
_TEXT_WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)\"?", re.IGNORECASE)


def _count_sqlite_changes(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    # SQLite's rowcount of a RETURNING statement is 0 until its rows are read, and its
    # change counter moves only when the statement completes: note the counter now,
    # compare at commit.
    compiled = getattr(context, "compiled", None)
    if compiled is not None and compiled.effective_returning:
        conn.info[SQLITE_CHANGES] = cursor.connection.total_changes


# Values a flushed object contributes besides its key (job and item states).
ROW_VALUES = ("state", "server_type")


def watch_writes(
    engine: Engine,
    sessions: Iterable[sessionmaker[Session]],
    apply: Any,
    *,
    autocommit_engine: Engine | None = None,
) -> None:
    """Hook the engines and session factories: `apply(changes)` after each commit that wrote."""
    for target, autocommit in ((engine, False), (autocommit_engine, True)):
        if target is None:
            continue
        event.listen(target, "after_cursor_execute", _statement_hook(autocommit))
        if target.dialect.name == "sqlite":
            event.listen(target, "before_cursor_execute", _count_sqlite_changes)
        if not autocommit:
            event.listen(target, "commit", _on_commit)
            event.listen(target, "rollback", _on_rollback)
            # A failed flush inside a savepoint: its changes stay counted (more is safe).
            event.listen(
                target, "rollback_savepoint", lambda conn, *_: conn.info.pop(FLUSHING, None)
            )
        event.listen(target.pool, "checkin", _checkin_hook(apply))
    for factory in sessions:
        event.listen(factory, "before_flush", _before_flush)
        event.listen(factory, "after_flush", _after_flush)


def _changes(info: dict[str, Any], key: str) -> Changes:
    changes: Changes | None = info.get(key)
    if changes is None:
        changes = info[key] = Changes()
    return changes


def _on_commit(conn: Connection) -> None:
    maybe = conn.info.pop(SQLITE_MAYBE, None)
    if maybe:
        total = conn.connection.dbapi_connection.total_changes  # type: ignore[union-attr]
        for before, changes in maybe:
            if total != before:  # something changed since this statement began
                _merge(_changes(conn.info, PENDING), changes)
    pending: Changes | None = conn.info.pop(PENDING, None)
    if pending:
        committed: Changes | None = conn.info.get(COMMITTED)
        conn.info[COMMITTED] = pending if committed is None else _merge(committed, pending)


def _on_rollback(conn: Connection) -> None:
    conn.info.pop(FLUSHING, None)  # a flush that failed
    conn.info.pop(PENDING, None)
    conn.info.pop(SQLITE_MAYBE, None)


def _checkin_hook(apply: Any) -> Any:
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is None:
            return
        committed: Changes | None = record.info.pop(COMMITTED, None)
        record.info.pop(PENDING, None)  # never committed: rolled back by the pool's reset
        record.info.pop(SQLITE_MAYBE, None)
        record.info.pop(SQLITE_CHANGES, None)
        record.info.pop(FLUSHING, None)
        if committed:
            apply(committed)

    return _on_checkin


def _merge(into: Changes, other: Changes) -> Changes:
    for name, value in vars(other).items():
        if isinstance(value, set):
            getattr(into, name).update(value)
        elif value:
            setattr(into, name, True)
    return into


def _statement_hook(autocommit: bool) -> Any:
    slot = COMMITTED if autocommit else PENDING

    def _after_cursor_execute(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        compiled = getattr(context, "compiled", None)
        if compiled is None:
            if context is not None and _TEXT_WRITE.match(statement):  # exec_driver_sql
                _changes(conn.info, slot).everything = True
            return
        if compiled.isinsert or compiled.isupdate or compiled.isdelete:
            flushing = conn.info.get(FLUSHING)
            if flushing is not None and flushing._flushing:
                return  # after_flush reads the unit of work's objects
            before = conn.info.pop(SQLITE_CHANGES, None)
            if before is None and cursor.rowcount == 0:
                return  # no row written
            if before is not None:  # SQLite, RETURNING: decided at commit (`_on_commit`)
                maybe = Changes()
                _read_statement(maybe, compiled, context.compiled_parameters)
                conn.info.setdefault(SQLITE_MAYBE, []).append((before, maybe))
                return
            _read_statement(_changes(conn.info, slot), compiled, context.compiled_parameters)
        elif isinstance(compiled.statement, TextClause):
            found = _TEXT_WRITE.match(statement)
            if found is not None:
                declared = context.execution_options.get(WRITES_OPTION, DeclaredWrites())
                _read_text(
                    _changes(conn.info, slot),
                    found.group(2).lower(),
                    found.group(1).split()[0].lower(),
                    declared,
                    context.compiled_parameters,
                )

    return _after_cursor_execute


def _read_text(
    changes: Changes,
    table: str,
    op: str,
    declared: DeclaredWrites,
    params: Sequence[Mapping[str, Any]],
) -> None:
    keys = None
    if declared.key_param is not None and all(declared.key_param in p for p in params):
        keys = [p[declared.key_param] for p in params]
    record_write(changes, table, op=op, keys=keys, columns=declared.columns, rows=())


def _read_statement(changes: Changes, compiled: Any, params: Sequence[Mapping[str, Any]]) -> None:
    statement = compiled.statement
    table = statement.table.name
    key_column = KEY_COLUMNS.get(table)
    if compiled.isinsert:
        op = "insert"
        keys: list[Any] | None = None
        if key_column is not None and params and all(key_column in p for p in params):
            keys = [p[key_column] for p in params]
        record_write(changes, table, op=op, keys=keys, columns=None, rows=params)
        return
    op = "update" if compiled.isupdate else "delete"
    keys = None
    if key_column is not None and statement.whereclause is not None:
        keys = _where_keys(statement.whereclause, key_column, compiled, params)
    columns = None
    if op == "update":
        columns = _set_columns(statement, params)
    record_write(changes, table, op=op, keys=keys, columns=columns, rows=params)


def _set_columns(statement: Any, params: Sequence[Mapping[str, Any]]) -> set[str] | None:
    values = statement._values  # what `.values()` set; None when the parameters carry them
    if values:
        return {key if isinstance(key, str) else key.key for key in values}
    if not params:
        return None
    names = set(statement.table.c.keys())
    return {key for key in params[0] if key in names} or None


def _where_keys(
    clause: Any, key_column: str, compiled: Any, params: Sequence[Mapping[str, Any]]
) -> list[Any] | None:
    """The keys an AND-only WHERE clause pins `key_column` to; None when it does not."""
    if isinstance(clause, Grouping):
        return _where_keys(clause.element, key_column, compiled, params)
    if isinstance(clause, BooleanClauseList):
        if clause.operator is not operators.and_:
            return None
        for part in clause.clauses:
            found = _where_keys(part, key_column, compiled, params)
            if found is not None:
                return found
        return None
    if not isinstance(clause, BinaryExpression):
        return None
    left, right = clause.left, clause.right
    if not (isinstance(left, ColumnClause) and left.key == key_column):
        return None
    if not isinstance(right, BindParameter):
        return None
    if clause.operator is operators.eq:
        return _bound_values(right, compiled, params, many=False)
    if clause.operator is operators.in_op:
        return _bound_values(right, compiled, params, many=True)
    return None


def _bound_values(
    bind: BindParameter[Any], compiled: Any, params: Sequence[Mapping[str, Any]], *, many: bool
) -> list[Any] | None:
    # Always the executed parameters: a cached compiled statement keeps the literal
    # values of the first statement it was compiled from.
    name = compiled.bind_names.get(bind)
    if name is None:
        return None
    values: list[Any] = []
    for row in params:
        if name in row:
            value = row[name]
            if many:
                values.extend(value)
            else:
                values.append(value)
        elif many:  # an expanding parameter, expanded into name_1, name_2, …
            prefix = f"{name}_"
            values.extend(v for k, v in row.items() if k.startswith(prefix))
        else:
            return None
    return values


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    # The session, not a flag: a flush that finds nothing to write ends without
    # `after_flush`, and the session's own `_flushing` tells when it is over.
    session.connection().info[FLUSHING] = session


def _after_flush(session: Session, _context: Any) -> None:
    info = session.connection().info
    changes = _changes(info, PENDING)
    for objects, op in (
        (session.new, "insert"),
        (session.dirty, "update"),
        (session.deleted, "delete"),
    ):
        for obj in objects:
            _read_object(changes, obj, op)


def _read_object(changes: Changes, obj: Any, op: str) -> None:
    state = inspect(obj)
    table = state.mapper.local_table.name
    columns = None
    if op == "update":
        columns = set(state.committed_state)
        if not columns:
            return  # in `dirty` but nothing changed
    key_column = KEY_COLUMNS.get(table)
    keys = None
    if key_column is not None:
        key = getattr(obj, key_column, None)
        keys = [key] if key is not None else None
    row = {name: getattr(obj, name) for name in ROW_VALUES if hasattr(obj, name)}
    record_write(changes, table, op=op, keys=keys, columns=columns, rows=[row])
