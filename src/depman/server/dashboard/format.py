"""Jinja filters: bytes, rates, ages and durations the way an operator reads them."""

from __future__ import annotations

from datetime import datetime

from depman.ages import format_age

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(value: int | float | None) -> str:
    """`1536` -> `1.5 KiB` (base 1024, as the agent's size parser); None -> `—`."""
    if value is None:
        return "—"
    size = float(value)
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit in BYTE_UNITS:
        if size < 1024 or unit == BYTE_UNITS[-1]:
            if unit == "B":
                return f"{sign}{int(size)} B"
            return f"{sign}{size:.1f} {unit}" if size < 100 else f"{sign}{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_rate(value: float | None) -> str:
    """Bytes per second -> `12.3 MiB/s`."""
    if not value:
        return "—"
    return format_bytes(value) + "/s"


def format_duration(seconds: float | None) -> str:
    """`75` -> `1m 15s`; compact, two units at most."""
    if seconds is None:
        return "—"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_seconds_ago(seconds: float | None) -> str:
    """`125` -> `2m05s ago`; None -> `never`."""
    if seconds is None:
        return "never"
    return f"{format_age(seconds)} ago"


def format_ago(value: datetime | None, now: datetime) -> str:
    """The age of a timestamp at `now`, or `—` when there is none."""
    if value is None:
        return "—"
    return format_seconds_ago((now - value).total_seconds())


def format_percent(fraction: float | None) -> str:
    """`0.423` -> `42%`."""
    if fraction is None:
        return "—"
    return f"{fraction * 100:.0f}%"


def format_timestamp(value: datetime | None) -> str:
    """An ISO timestamp in UTC to the second, for titles."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


FILTERS = {
    "bytes": format_bytes,
    "rate": format_rate,
    "duration": format_duration,
    "age": format_seconds_ago,
    "ago": format_ago,
    "pct": format_percent,
    "ts": format_timestamp,
}
