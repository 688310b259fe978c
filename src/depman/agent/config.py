"""Agent settings, read once from the environment into a frozen ``AgentConfig``."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from . import protocol as p
from .errors import ConfigError
from .identity import identity_from_env
from .redact import redact_url, register_secret, register_url

T = TypeVar("T")

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
    "p": 1024**5, "pb": 1024**5, "pib": 1024**5,
}
# The field agent's pattern had a stray escaped backslash and rejected "10GB".
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_byte_size(text: str) -> int:
    """Parse ``10GB``, ``500MiB``, ``2TiB``, ``1.5 GB`` or ``1234`` (base 1024) into bytes."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (examples: 10GB, 500MiB, 1.5 GB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use 1/true/yes/on or 0/false/no/off)")


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_seconds(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a non-negative number of seconds: {text!r}")
    return value


def _parse_http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text.strip().rstrip("/")


def _parse_domains(text: str) -> tuple[str, ...]:
    domains = tuple(d.strip().lower().lstrip(".") for d in text.split(",") if d.strip())
    if not domains:
        raise ValueError("empty domain list")
    return domains


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent reads from its environment (see docs/agent.md)."""

    api_base_url: str
    server_type: str
    shared_secret: str | None = None
    instance_id: str | None = None
    instance_ip: str | None = None
    # Which variable gave instance_id / instance_ip (DM_INSTANCE_ID, CONTAINER_ID, ...).
    instance_id_source: str | None = None
    instance_ip_source: str | None = None
    hf_token: str | None = None
    civitai_token: str | None = None
    workspace: Path = Path(p.DEFAULT_WORKSPACE)
    comfyui_dir: Path = Path(p.DEFAULT_WORKSPACE) / p.COMFYUI_SUBDIR
    state_path: Path = Path(p.DEFAULT_WORKSPACE) / p.STATE_FILENAME
    poll_seconds: float = p.DEFAULT_POLL_SECONDS
    heartbeat_seconds: float = p.DEFAULT_HEARTBEAT_SECONDS
    max_parallel_downloads: int = p.DEFAULT_MAX_PARALLEL_DOWNLOADS
    verbose_progress: bool = False
    allowed_domains: tuple[str, ...] = p.DEFAULT_ALLOWED_DOMAINS
    # Overrides of profile.dynamicPolicy; None means "use the profile's value".
    dynamic_eviction_enabled: bool | None = None
    dynamic_min_free_bytes: int | None = None
    dynamic_max_bytes: int | None = None
    eviction_batch_max: int | None = None
    pin_ttl_seconds: int | None = None
    # depman additions.
    download_connections: int = p.DEFAULT_DOWNLOAD_CONNECTIONS
    min_segment_bytes: int = p.DEFAULT_MIN_SEGMENT_BYTES
    progress_seconds: float = p.DEFAULT_PROGRESS_SECONDS
    long_poll_seconds: float = p.DEFAULT_LONG_POLL_SECONDS
    item_retry_seconds: float = p.DEFAULT_ITEM_RETRY_SECONDS
    self_update: bool = True
    update_probation_seconds: float = p.DEFAULT_UPDATE_PROBATION_SECONDS
    update_retry_seconds: float = p.DEFAULT_UPDATE_RETRY_SECONDS
    adopt_stable_seconds: float = p.ADOPT_STABLE_SECONDS
    # Sources: a stall (under this many bytes/s on average for stall_seconds; 0 turns it
    # off) and a 429's Retry-After up to max_retry_after_seconds are waited out.
    stall_bytes_per_second: int = p.DEFAULT_STALL_BYTES_PER_SECOND
    stall_seconds: float = p.DEFAULT_STALL_SECONDS
    max_retry_after_seconds: float = p.DEFAULT_MAX_RETRY_AFTER_SECONDS
    # ComfyUI integration: extra_model_paths.yaml (default: the ComfyUI folder's) and
    # a ComfyUI to ask whether it lists an installed file.
    extra_model_paths: Path | None = None
    comfyui_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentConfig:
        """Build the config; a bad value raises ConfigError naming the variable."""
        reader = _EnvReader(env)
        base_url = reader.required("FCS_API_BASE_URL").rstrip("/")
        register_url(base_url)  # user:password@ never reaches a log line
        shown = redact_url(base_url)
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as exc:
            raise ConfigError("FCS_API_BASE_URL", f"not a valid URL: {shown}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("FCS_API_BASE_URL", f"not an http(s) URL: {shown}")
        if not parts.path.endswith("/api"):
            raise ConfigError("FCS_API_BASE_URL", f"must end with /api: {shown}")
        workspace = Path(reader.text("WORKSPACE") or p.DEFAULT_WORKSPACE)
        parallel = reader.get("MAX_PARALLEL_DOWNLOADS", _parse_int,
                              p.DEFAULT_MAX_PARALLEL_DOWNLOADS)
        identity = identity_from_env(env)
        for secret in ("DEPENDENCY_MANAGER_SHARED_SECRET", "HF_TOKEN", "CIVITAI_TOKEN"):
            register_secret(reader.text(secret))
        return cls(
            api_base_url=base_url,
            server_type=reader.required("SERVER_TYPE"),
            shared_secret=reader.text("DEPENDENCY_MANAGER_SHARED_SECRET"),
            instance_id=identity.instance_id,
            instance_ip=identity.instance_ip,
            instance_id_source=identity.instance_id_source,
            instance_ip_source=identity.instance_ip_source,
            hf_token=reader.text("HF_TOKEN"),
            civitai_token=reader.text("CIVITAI_TOKEN"),
            workspace=workspace,
            comfyui_dir=Path(reader.text("DM_COMFYUI_DIR") or workspace / p.COMFYUI_SUBDIR),
            state_path=Path(reader.text("DM_STATE_PATH") or workspace / p.STATE_FILENAME),
            poll_seconds=reader.positive("DM_POLL_SECONDS", p.DEFAULT_POLL_SECONDS),
            heartbeat_seconds=reader.positive("DM_HEARTBEAT_SECONDS",
                                              p.DEFAULT_HEARTBEAT_SECONDS),
            max_parallel_downloads=max(1, min(p.MAX_PARALLEL_DOWNLOADS_LIMIT, parallel)),
            verbose_progress=reader.get("DM_VERBOSE_PROGRESS", parse_bool, False),
            allowed_domains=reader.get("DM_ALLOWED_DOMAINS", _parse_domains,
                                       p.DEFAULT_ALLOWED_DOMAINS),
            dynamic_eviction_enabled=reader.get("DM_DYNAMIC_EVICTION_ENABLED", parse_bool, None),
            dynamic_min_free_bytes=reader.get("DM_DYNAMIC_MIN_FREE_BYTES", parse_byte_size, None),
            dynamic_max_bytes=reader.get("DM_DYNAMIC_MAX_BYTES", parse_byte_size, None),
            eviction_batch_max=reader.at_least("DM_EVICTION_BATCH_MAX", 1),
            pin_ttl_seconds=reader.at_least("DM_PIN_TTL_SECONDS", 0),
            download_connections=reader.at_least("DM_DOWNLOAD_CONNECTIONS", 1)
            or p.DEFAULT_DOWNLOAD_CONNECTIONS,
            min_segment_bytes=reader.get("DM_MIN_SEGMENT_BYTES", parse_byte_size,
                                         p.DEFAULT_MIN_SEGMENT_BYTES) or 1,
            progress_seconds=reader.positive("DM_PROGRESS_SECONDS", p.DEFAULT_PROGRESS_SECONDS),
            long_poll_seconds=min(float(p.LONG_POLL_MAX_SECONDS),
                                  reader.get("DM_LONG_POLL_SECONDS", _parse_seconds,
                                             p.DEFAULT_LONG_POLL_SECONDS)),
            item_retry_seconds=reader.get("DM_ITEM_RETRY_SECONDS", _parse_seconds,
                                          p.DEFAULT_ITEM_RETRY_SECONDS),
            self_update=reader.get("DM_SELF_UPDATE", parse_bool, True),
            update_probation_seconds=reader.positive("DM_UPDATE_PROBATION_SECONDS",
                                                     p.DEFAULT_UPDATE_PROBATION_SECONDS),
            update_retry_seconds=reader.positive("DM_UPDATE_RETRY_SECONDS",
                                                 p.DEFAULT_UPDATE_RETRY_SECONDS),
            adopt_stable_seconds=reader.get("DM_ADOPT_STABLE_SECONDS", _parse_seconds,
                                            p.ADOPT_STABLE_SECONDS),
            stall_bytes_per_second=reader.get("DM_STALL_BYTES_PER_SECOND", parse_byte_size,
                                              p.DEFAULT_STALL_BYTES_PER_SECOND),
            stall_seconds=reader.get("DM_STALL_SECONDS", _parse_seconds,
                                     p.DEFAULT_STALL_SECONDS),
            max_retry_after_seconds=reader.get("DM_MAX_RETRY_AFTER_SECONDS", _parse_seconds,
                                               p.DEFAULT_MAX_RETRY_AFTER_SECONDS),
            extra_model_paths=reader.get("DM_EXTRA_MODEL_PATHS", Path, None),
            comfyui_url=reader.get("DM_COMFYUI_URL", _parse_http_url, None),
        )

    def redacted(self) -> dict[str, object]:
        """The settings for a start-up log line, with secrets shown only as set/unset."""
        secret_fields = {"shared_secret", "hf_token", "civitai_token"}
        return {
            name: ("<set>" if value else "<unset>") if name in secret_fields
            else redact_url(value) if name == "api_base_url" else str(value)
            for name, value in vars(self).items()
        }


class _EnvReader:
    """Typed access to env vars; every failure names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise ConfigError(name, "is required but not set")
        return value

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(name, f"invalid value {raw!r}: {exc}") from exc

    def positive(self, name: str, default: float) -> float:
        value = self.get(name, _parse_seconds, default)
        if value <= 0:
            raise ConfigError(name, f"must be greater than 0, got {value}")
        return value

    def at_least(self, name: str, minimum: int) -> int | None:
        value = self.get(name, _parse_int, None)
        if value is not None and value < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        return value
