"""`create_app(settings)`: the FastAPI application of the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp

from depman.core.policy import Policy
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
from depman.server.cache import ServerCache
from depman.server.cache.invalidation import watch_writes
from depman.server.cache.notify import Notifier
from depman.server.cache.wakeups import listen_forever
from depman.server.errors import install_error_handlers
from depman.server.guard import RequestGuard
from depman.server.maintenance_loop import run_maintenance
from depman.server.metrics import LatencyMiddleware, Metrics
from depman.server.state import ServerState
from depman.settings import ServerSettings
from depman.sources import SourceResolver
from depman.store.session import Database, open_database

log = logging.getLogger(__name__)


def _watch_writes(state: ServerState) -> None:
    """Every committed write drops the memos it made stale, here and in the other replicas."""
    db, cache = state.db, state.cache
    if db.dialect == "postgresql":
        cache.notifier = Notifier(lambda: db.quick(write=True))
    watch_writes(
        db.engine, (db.writer, db.reader), cache.committed, autocommit_engine=db.quick_engine
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.depman
    pauses = app.state.metrics.pauses
    cache = state.cache
    cache.hub.bind(asyncio.get_running_loop())
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
        # Memos wait for the listener: another replica's writes must be able to clear them.
        cache.memos.set_enabled(False)
        listener = listen_forever(
            state.settings.database_url, cache.received, cache.memos.set_enabled
        )
        tasks.append(asyncio.create_task(listener, name="depman-listen"))
    try:
        yield
    finally:
        cache.hub.wake_all()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        pauses.remove_gc_callback()
        if state.fill_worker is not None:
            await asyncio.to_thread(state.fill_worker.stop)
        if cache.notifier is not None:
            await asyncio.to_thread(cache.notifier.close)
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
        cache=ServerCache.create(memos=settings.agent_memos),
    )
    if state.mirror is not None:
        state.fill_worker = FillWorker(state.mirror, db, settings, gate=state.upstream)
    _watch_writes(state)
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
    dashboard.mount(app)
    return app


def served_app(app: FastAPI) -> ASGIApp:
    """The app as served: the request guard (server/guard.py), the latency timer (one for
    every request), the agent gateway's front (server/agent_gateway/asgi.py), then FastAPI."""
    settings: ServerSettings = app.state.settings
    gateway = AgentGateway(app, app.state.agent_pipeline)
    return RequestGuard(
        LatencyMiddleware(gateway, app.state.metrics),
        agent_max=settings.agent_max_body_bytes,
        other_max=settings.admin_max_body_bytes,
        refused=app.state.metrics.refused,
        operator=lambda authorization: holds_operator_token(app.state.depman, authorization),
    )
