"""`create_app(settings)`: the FastAPI application of the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.orm import Session
from starlette.types import ASGIApp

from depman.core.policy import Policy
from depman.core.signals import notify_statement, take_marks
from depman.core.wakeups import listen_forever
from depman.mirror import FillWorker, MirrorService
from depman.server import dashboard
from depman.server.agent_gateway.asgi import AgentGateway
from depman.server.agent_gateway.pipeline import Pipeline
from depman.server.agent_gateway.write_behind import run_beat_flusher
from depman.server.api import (
    admin_actions,
    admin_agent_builds,
    admin_catalog,
    admin_fleet,
    admin_instances,
    admin_mirror,
    admin_workflows,
    agent_bundle,
    agent_items,
    agent_protocol,
    jobs,
    metrics,
)
from depman.server.auth import holds_operator_token
from depman.server.auth_failures import AuthFailures
from depman.server.errors import install_error_handlers
from depman.server.guard import RequestGuard
from depman.server.maintenance_loop import run_maintenance
from depman.server.metrics import LatencyMiddleware, Metrics
from depman.server.state import ServerState
from depman.settings import ServerSettings
from depman.sources import SourceResolver
from depman.store.session import Database, open_database

log = logging.getLogger(__name__)


def _tell_other_replicas(state: ServerState, payloads: list[str]) -> None:
    """NOTIFY the other replicas of a commit, in a transaction of its own (core/signals.py)."""
    statement, params = notify_statement(payloads)
    try:
        with state.db.quick(write=True) as conn:
            conn.execute(statement, params)
    except Exception:
        # The commit stands; the other replicas' memos of these instances expire.
        log.warning("could not notify the other replicas of %d changes", len(payloads))


def _install_commit_hooks(state: ServerState) -> None:
    """Turn the marks a transaction left into wake-ups once it commits."""

    def _after_commit(session: Session) -> None:
        marks = take_marks(session)
        hints = state.hub.hints
        if marks.builds:
            state.hub.forget_builds()
        if marks.tokens:
            hints.forget_tokens(marks.tokens)
        if marks.instances or marks.changed or marks.tokens:
            hints.forget(marks.instances | marks.changed | marks.tokens)
        state.hub.notify("i", marks.instances)
        state.hub.notify("j", marks.jobs)
        state.hub.pending_server_types.update(marks.pending)
        if marks.payloads:
            _tell_other_replicas(state, marks.payloads)

    def _after_rollback(session: Session) -> None:
        take_marks(session)

    for factory in (state.db.writer, state.db.reader):
        event.listen(factory, "after_commit", _after_commit)
        event.listen(factory, "after_soft_rollback", lambda s, _t: _after_rollback(s))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.depman
    pauses = app.state.metrics.pauses
    state.hub.bind(asyncio.get_running_loop())
    anyio.to_thread.current_default_thread_limiter().total_tokens = state.settings.worker_threads
    pauses.install_gc_callback()
    tasks = [
        asyncio.create_task(run_maintenance(state, pauses), name="depman-maintenance"),
        asyncio.create_task(pauses.watch_loop(), name="depman-loop-lag"),
    ]
    if state.settings.heartbeat_flush_seconds > 0:
        tasks.append(asyncio.create_task(run_beat_flusher(state, pauses), name="depman-beats"))
    if state.fill_worker is not None:
        state.fill_worker.start()
    if state.db.dialect == "postgresql":
        # Poll hints wait for the listener: another replica's enqueue must be able to clear them.
        state.hub.hints.set_enabled(False)
        tasks.append(
            asyncio.create_task(
                listen_forever(state.settings.database_url, state.hub), name="depman-listen"
            )
        )
    try:
        yield
    finally:
        state.hub.wake_all()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pauses.remove_gc_callback()
        if state.fill_worker is not None:
            await asyncio.to_thread(state.fill_worker.stop)
        state.db.dispose()


def create_app(settings: ServerSettings, *, database: Database | None = None) -> FastAPI:
    """The application: routers, error handlers, metrics, dashboard; the engine on `app.state`."""
    db = database or open_database(settings.database_url, pool_size=settings.db_pool_size)
    state = ServerState(
        settings=settings,
        db=db,
        policy=Policy.from_settings(settings),
        resolver=SourceResolver.from_settings(settings),
        mirror=MirrorService.from_settings(settings),
    )
    if state.mirror is not None:
        state.fill_worker = FillWorker(state.mirror, db, settings, gate=state.upstream)
    _install_commit_hooks(state)
    app = FastAPI(
        title="depman control plane",
        version="1",
        summary="Model dependency manager for fleets of ComfyUI GPU instances.",
        lifespan=_lifespan,
        # The interactive docs load their scripts from a public CDN: opt-in only.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.depman = state
    app.state.engine = db.engine
    app.state.settings = settings
    app.state.metrics = Metrics(state)
    app.state.agent_pipeline = Pipeline(state, app.state.metrics)
    state.auth_failures = AuthFailures(
        free_failures=settings.auth_free_failures,
        max_backoff_seconds=settings.auth_max_backoff_seconds,
    )
    state.auth_failures.bind_metrics(
        app.state.metrics.auth_failures, app.state.metrics.auth_throttled
    )
    install_error_handlers(app)
    for module in (
        agent_protocol,
        agent_items,
        admin_catalog,
        admin_instances,
        admin_mirror,
        admin_actions,
        admin_fleet,
        admin_workflows,
        admin_agent_builds,
        jobs,
        metrics,
        agent_bundle,
    ):
        app.include_router(module.router)
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)
    dashboard.mount(app)
    return app


def served_app(app: FastAPI) -> ASGIApp:
    """The app as served: the request guard (server/guard.py), then the agent gateway's
    front (server/agent_gateway/asgi.py), then FastAPI."""
    settings: ServerSettings = app.state.settings
    return RequestGuard(
        AgentGateway(app, app.state.agent_pipeline, app.state.metrics),
        agent_max=settings.agent_max_body_bytes,
        other_max=settings.admin_max_body_bytes,
        refused=app.state.metrics.refused,
        operator=lambda authorization: holds_operator_token(app.state.depman, authorization),
    )
