"""The control plane's settings: one typed object, built in `main()`, never at import.

Precedence: command-line flag > environment > default. Every field carries a
description; `tests/server/test_settings.py` fails when one is undocumented in
`docs/server.md`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./depman.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
# Shorter admin tokens and fleet secrets are refused at start: guessable at any rate.
MIN_SECRET_CHARS = 16
MIB = 1024 * 1024


# The longest long-poll (queue and job reads) any request may ask for; register
# advertises it to agents as `maxWaitSeconds`.
MAX_WAIT_SECONDS = 30


def parse_upstream_caps(text: str) -> dict[str, int]:
    """`host=N,host=N` -> {host: N}; ValueError naming the bad part."""
    caps: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, count = part.partition("=")
        host = host.strip().lower().rstrip(".")
        count = count.strip()
        if not sep or not host or "/" in host or not (count.isascii() and count.isdigit()):
            raise ValueError(f"upstream_concurrency: {part!r} is not host=N")
        if not 1 <= int(count) <= 100_000:
            raise ValueError(f"upstream_concurrency: {part!r}: N must be 1..100000")
        caps[host] = int(count)
    return caps


class ServerSettings(BaseSettings):
    """Settings of `depman server`."""

    model_config = SettingsConfigDict(
        env_prefix="DEPMAN_", extra="ignore", populate_by_name=True, frozen=True
    )

    host: str = Field(DEFAULT_HOST, description="Address the HTTP server binds to.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A second TCP port, served by a process of its own, for job runners, "
        "operators and the dashboard (agents stay on `port`); needs PostgreSQL.",
    )
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
    upstream_concurrency: str = Field(
        "",
        description="Downloads in flight per upstream host across the fleet, as "
        "`host=N,host=N` (e.g. `huggingface.co=16,civitai.com=4`); further items wait in "
        "their queues. Empty: no caps. Items served from the fleet mirror are not capped.",
    )
    upstream_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="A capped download handed out in a poll holds its host's slot until the "
        "agent reports it finished, or until this long passes with the agent neither "
        "reporting it running nor taking it again in a poll.",
    )
    instance_lost_seconds: float = Field(
        90.0,
        gt=0,
        description="An instance with no heartbeat for this long is lost: its waiting and "
        "ready jobs are placed elsewhere, a running one fails, its queue is cancelled and its "
        "agent must register again.",
    )
    lost_wide_silence_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="When more than this share of the registered instances (and at least "
        "10) are quiet at once, the silence is taken for the server's or its network's: "
        "none of them is lost before lost_wide_silence_seconds of silence. 1 turns this off.",
    )
    lost_wide_silence_seconds: float = Field(
        600.0,
        gt=0,
        description="How long a wide silence is waited out before its instances are lost "
        "anyway (never less than instance_lost_seconds).",
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
    agent_memos: bool = Field(
        True,
        description="Answer unchanged agent requests (an empty poll, an unchanged heartbeat, "
        "a known token) from this process's memory. Off: every agent request asks the "
        "database (the reference the memos are tested against).",
    )
    max_long_poll_seconds: float = Field(
        float(MAX_WAIT_SECONDS),
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Upper bound of waitSeconds on the queue and job reads.",
    )
    maintenance_interval_seconds: float = Field(
        5.0, gt=0, description="How often stale items, timeouts and pending jobs are swept."
    )
    pause_warning_seconds: float = Field(
        0.25,
        gt=0,
        description="Log a warning when the event loop, a garbage collection or a periodic "
        "task holds a server process this long (at most once a minute per kind).",
    )
    public_url: str | None = Field(
        None,
        description="Root URL agents reach this server at, for agentUpdate.downloadUrl "
        "(unset: the scheme and Host of each agent's own request).",
    )
    hf_endpoint: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("DEPMAN_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hugging Face Hub base URL that resolves hf:// sources (the Hugging Face "
        "client's HF_ENDPOINT convention).",
    )
    civitai_endpoint: str = Field(
        "https://civitai.com",
        validation_alias=AliasChoices("DEPMAN_CIVITAI_ENDPOINT"),
        description="Civitai base URL that resolves civitai:// sources.",
    )
    hf_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DEPMAN_HF_TOKEN", "HF_TOKEN"),
        description="Token for resolving hf:// sources of gated or private repos (sent to "
        "hf_endpoint only; never stored in the catalog).",
    )
    civitai_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DEPMAN_CIVITAI_TOKEN", "CIVITAI_TOKEN"),
        description="Token for resolving civitai:// sources that need a login.",
    )
    source_timeout_seconds: float = Field(
        30.0, gt=0, description="Time limit of each request that resolves a source."
    )
    mirror_url: str | None = Field(
        None,
        description="The fleet mirror: s3://bucket/prefix (the server fills it and hands out "
        "presigned URLs) or an https:// base of a read-only mirror someone else fills "
        "(objects at <base>/sha256/<hex>). Unset: no mirror.",
    )
    mirror_endpoint_url: str | None = Field(
        None,
        description="S3 API endpoint of an s3:// mirror on R2, B2, MinIO or another "
        "S3-compatible store (unset: AWS S3). Credentials come from AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and AWS_REGION.",
    )
    mirror_presign_seconds: int = Field(
        12 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Lifetime of the presigned mirror URL an agent gets with each queue item.",
    )
    mirror_fill: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: the server copies every catalog file that has a sha256 into a "
        "writable mirror by itself; manual: only what `depman mirror fill` asks for.",
    )
    mirror_retry_seconds: float = Field(
        60.0,
        gt=0,
        description="A failed mirror fill is tried again after this long, doubling with each "
        "failure in a row up to an hour.",
    )
    mirror_fill_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        description="Files the server copies into the mirror at once (each holds one part "
        "in memory).",
    )
    mirror_part_bytes: int = Field(
        32 * MIB,
        ge=5 * MIB,
        le=5 * 1024 * MIB,
        description="Part size of the multipart uploads that fill the mirror (memory per fill).",
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

    agent_max_body_bytes: int = Field(
        MIB,
        ge=1024,
        le=1024 * MIB,
        description="Largest request body of the agent routes (/api/dependencies/*); "
        "larger ones are answered 413 before they are read.",
    )
    admin_max_body_bytes: int = Field(
        8 * MIB,
        ge=1024,
        le=1024 * MIB,
        description="Largest request body of every other route (admin API, jobs, login); "
        "larger ones are answered 413 before they are read.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A client must send a request's whole header within this time "
        "(from its first byte, or from connecting); slower ones are disconnected.",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A client must send a request's whole body within this time after "
        "its header; slower ones are disconnected.",
    )
    keep_alive_seconds: float = Field(
        65.0,
        gt=0,
        description="An idle keep-alive connection is closed after this time.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="Largest request line plus headers; larger requests are refused and "
        "the connection closed.",
    )
    max_connections: int = Field(
        20_000,
        ge=16,
        description="Open connections (and requests in progress) per server process; beyond "
        "it requests are answered 503. Each long-polling agent holds one connection.",
    )
    trusted_proxies: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses (or *) of reverse proxies whose "
        "X-Forwarded-For names the client; failed-login backoff is per client address.",
    )
    auth_free_failures: int = Field(
        5,
        ge=1,
        description="Failed authentications a client address may make (admin, login, "
        "register) before it must back off.",
    )
    auth_max_backoff_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest a client address is refused (429) after repeated failed "
        "authentications; the wait doubles with each failure up to this.",
    )
    allow_any_destination: bool = Field(
        False,
        description="Accept catalog destRelativePath outside the model folders (models/). "
        "Off: a catalog entry cannot place code ComfyUI would execute.",
    )
    api_docs: bool = Field(
        False,
        description="Serve the interactive API docs at /docs and /redoc (they load scripts "
        "from a public CDN); /openapi.json is served either way.",
    )

    @field_validator("upstream_concurrency")
    @classmethod
    def _caps_parse(cls, value: str) -> str:
        parse_upstream_caps(value)
        return value

    @property
    def upstream_caps(self) -> dict[str, int]:
        """Upstream host -> downloads in flight allowed across the fleet."""
        return parse_upstream_caps(self.upstream_concurrency)

    @model_validator(mode="after")
    def _secrets_long_enough(self) -> ServerSettings:
        for name, secret in (
            ("DEPMAN_ADMIN_TOKEN", self.admin_token),
            ("DEPMAN_SUBMIT_TOKEN", self.submit_token),
            ("DEPENDENCY_MANAGER_SHARED_SECRET", self.shared_secret),
        ):
            if secret is not None and 0 < len(secret.get_secret_value()) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"{name} must be at least {MIN_SECRET_CHARS} characters (generate one "
                    "with: python -c 'import secrets; print(secrets.token_urlsafe())')"
                )
        return self

    @model_validator(mode="after")
    def _workers_need_postgresql(self) -> ServerSettings:
        # Workers are replicas: their memos stay coherent through NOTIFY only.
        if self.workers > 1 and not self.database_url.startswith("postgresql"):
            raise ValueError("workers > 1 needs a PostgreSQL database_url")
        if self.api_port is not None and not self.database_url.startswith("postgresql"):
            raise ValueError("api_port needs a PostgreSQL database_url (its process is a replica)")
        return self

    @model_validator(mode="after")
    def _public_url_is_http(self) -> ServerSettings:
        # Agents fetch agentUpdate.downloadUrl with it: a typo would break every update.
        if self.public_url:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"public_url must be an http(s) URL, got {self.public_url!r}")
        return self

    @model_validator(mode="after")
    def _mirror_url_is_known(self) -> ServerSettings:
        # A typo would leave the fleet on the upstreams without a word.
        if self.mirror_url:
            parts = urlsplit(self.mirror_url)
            if parts.scheme not in ("s3", "https", "http") or not parts.netloc:
                raise ValueError(
                    "mirror_url must be s3://bucket/prefix or an https:// base, "
                    f"got {self.mirror_url!r}"
                )
        if self.mirror_endpoint_url:
            parts = urlsplit(self.mirror_endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"mirror_endpoint_url must be an http(s) URL, got {self.mirror_endpoint_url!r}"
                )
        return self

    @property
    def live_ttl(self) -> float:
        """Seconds a heartbeat keeps an instance live."""
        return self.live_ttl_seconds or 3 * self.heartbeat_seconds
