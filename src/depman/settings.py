"""The control plane's settings: one typed object, built in `main()`, never at import.

Precedence: command-line flag > environment > default. Every field carries a
description; `tests/server/test_settings.py` fails when one is undocumented in
`docs/server.md`.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./depman.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


class ServerSettings(BaseSettings):
    """Settings of `depman server`."""

    model_config = SettingsConfigDict(
        env_prefix="DEPMAN_", extra="ignore", populate_by_name=True, frozen=True
    )

    host: str = Field(DEFAULT_HOST, description="Address the HTTP server binds to.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db.",
    )
    shared_secret: SecretStr | None = Field(
        None,
        validation_alias="DEPENDENCY_MANAGER_SHARED_SECRET",
        description="Fleet secret agents send in X-DM-Secret on register (unset: no check).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for /api/admin, /api/jobs and the dashboard (unset: refused).",
    )
    submit_token: SecretStr | None = Field(
        None,
        description="Optional bearer token for /api/jobs only (submit, read, start, complete).",
    )
    heartbeat_seconds: float = Field(
        30.0, gt=0, description="Heartbeat interval agents use; liveness TTL derives from it."
    )
    live_ttl_seconds: float | None = Field(
        None,
        gt=0,
        description="An instance is live while its last heartbeat is younger than this "
        "(default 3 x heartbeat_seconds).",
    )
    running_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="A running item no heartbeat lists as downloading for this long is requeued.",
    )
    max_item_attempts: int = Field(
        5,
        ge=1,
        description="An item that reaches this many attempts (stale requeues, `retrying` "
        "reports) is failed.",
    )
    item_retry_window_seconds: float = Field(
        3600.0,
        gt=0,
        description="An item whose dep keeps failing (`retrying` reports, heartbeat "
        "failedDepIds) for this long is failed, whatever its attempt count.",
    )
    job_pending_timeout_seconds: float = Field(
        3600.0, gt=0, description="A job not placed within this time fails."
    )
    job_deps_timeout_seconds: float = Field(
        6 * 3600.0, gt=0, description="A placed job whose deps are not all installed in time fails."
    )
    job_max_placements: int = Field(
        3,
        ge=1,
        description="How many instances a job may be placed on when a dep fails there.",
    )
    placement_max_wait_seconds: float = Field(
        120.0,
        ge=0,
        description="Longest a job waits for a busy instance that holds more of its bytes "
        "instead of taking a free one (0: never waits).",
    )
    placement_bandwidth_bytes_per_second: float = Field(
        100 * 1024**2,
        gt=0,
        description="Download rate per instance that placement assumes when it weighs the "
        "time saved by waiting for a busy holder of a job's deps.",
    )
    placement_default_job_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a job keeps its instance busy, assumed until jobs of its "
        "server type have completed (then the median of recent ones is used).",
    )
    instance_lost_seconds: float = Field(
        90.0,
        gt=0,
        description="An instance with no heartbeat for this long is lost: its waiting and "
        "ready jobs are placed elsewhere, a running one fails, its queue is cancelled and its "
        "agent must register again.",
    )
    retry_backoff_seconds: float = Field(
        120.0,
        gt=0,
        description="A failed static or prefetch download is queued again after this long, "
        "doubling with each failure in a row.",
    )
    retry_backoff_max_seconds: float = Field(
        1800.0, gt=0, description="Longest wait between retries of a failed static download."
    )
    heartbeat_flush_seconds: float = Field(
        1.0,
        ge=0,
        le=10,
        description="Unchanged heartbeats are acknowledged from memory and written in one "
        "batch this often (0: every heartbeat is written before it is answered).",
    )
    max_long_poll_seconds: float = Field(
        30.0, ge=0, le=30, description="Upper bound of waitSeconds on the queue and job reads."
    )
    maintenance_interval_seconds: float = Field(
        5.0, gt=0, description="How often stale items, timeouts and pending jobs are swept."
    )
    public_url: str | None = Field(
        None,
        description="Root URL agents reach this server at, for agentUpdate.downloadUrl "
        "(unset: the scheme and Host of each agent's own request).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port (more than one needs PostgreSQL).",
    )
    db_pool_size: int = Field(
        20,
        ge=1,
        description="Database connections kept per server process (as many again may overflow).",
    )
    worker_threads: int = Field(
        64, ge=4, description="Threads that run the synchronous request handlers."
    )

    @model_validator(mode="after")
    def _workers_need_postgresql(self) -> ServerSettings:
        # Workers are replicas: their memos stay coherent through NOTIFY only.
        if self.workers > 1 and not self.database_url.startswith("postgresql"):
            raise ValueError("workers > 1 needs a PostgreSQL database_url")
        return self

    @property
    def live_ttl(self) -> float:
        """Seconds a heartbeat keeps an instance live."""
        return self.live_ttl_seconds or 3 * self.heartbeat_seconds
