"""The knobs domain logic needs, lifted from ServerSettings (so core never reads settings)."""

from __future__ import annotations

from dataclasses import dataclass

from depman.settings import ServerSettings


@dataclass(frozen=True)
class Policy:
    """Timeouts and limits of liveness, queue items, jobs and placement."""

    # Field order is the constructor's: keep new fields last.

    live_ttl_seconds: float = 90.0
    running_timeout_seconds: float = 300.0
    max_item_attempts: int = 5
    item_retry_window_seconds: float = 3600.0
    job_pending_timeout_seconds: float = 3600.0
    job_deps_timeout_seconds: float = 6 * 3600.0
    job_max_placements: int = 3
    placement_max_wait_seconds: float = 120.0
    placement_bandwidth_bytes_per_second: float = 100 * 1024**2
    placement_default_job_seconds: float = 60.0
    instance_lost_seconds: float = 90.0
    retry_backoff_seconds: float = 120.0
    retry_backoff_max_seconds: float = 1800.0
    allow_any_destination: bool = False
    # A fleet mirror is configured: a v1 agent's download of a mirrored file came from it.
    mirror_enabled: bool = False
    # A silence of more than this share of the registered instances (core/lost.py) is
    # waited out for lost_wide_silence_seconds before its instances are lost.
    lost_wide_silence_share: float = 0.5
    lost_wide_silence_seconds: float = 600.0

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Policy:
        """The policy a server runs with."""
        return cls(
            live_ttl_seconds=settings.live_ttl,
            running_timeout_seconds=settings.running_timeout_seconds,
            max_item_attempts=settings.max_item_attempts,
            item_retry_window_seconds=settings.item_retry_window_seconds,
            job_pending_timeout_seconds=settings.job_pending_timeout_seconds,
            job_deps_timeout_seconds=settings.job_deps_timeout_seconds,
            job_max_placements=settings.job_max_placements,
            placement_max_wait_seconds=settings.placement_max_wait_seconds,
            placement_bandwidth_bytes_per_second=settings.placement_bandwidth_bytes_per_second,
            placement_default_job_seconds=settings.placement_default_job_seconds,
            instance_lost_seconds=settings.instance_lost_seconds,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            retry_backoff_max_seconds=settings.retry_backoff_max_seconds,
            allow_any_destination=settings.allow_any_destination,
            mirror_enabled=bool(settings.mirror_url),
            lost_wide_silence_share=settings.lost_wide_silence_share,
            lost_wide_silence_seconds=settings.lost_wide_silence_seconds,
        )
