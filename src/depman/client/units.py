"""Byte sizes and timestamps: parsing `6.5GiB` in fleet files, printing sizes in tables."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Base 1024 for both spellings (`GB` and `GiB`), as the v1 agent's env overrides use them.
UNIT_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "p": 1024**5,
}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
DISPLAY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_byte_size(value: int | str) -> int:
    """Bytes of an int or a string like `150MB`, `6.5GiB`, `2 TiB`, `1024` (base 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a byte size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a byte size cannot be negative")
        return value
    match = SIZE_RE.match(value)
    # `Gi` (Kubernetes style) is fine; a bare `i` is a typo.
    if not match or (match.group(3).lower() == "i" and not match.group(2)):
        raise ValueError(f"not a byte size: {value!r} (use an integer or e.g. 150MB, 6.5GiB, 2TiB)")
    number, prefix, _ = match.groups()
    return round(float(number) * UNIT_FACTORS[prefix.lower()])


def format_bytes(value: int | None) -> str:
    """`6.5 GiB`-style rendering; `-` for unknown."""
    if value is None:
        return "-"
    size = float(value)
    for unit in DISPLAY_UNITS:
        if abs(size) < 1024 or unit == DISPLAY_UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from an ISO-8601 string (naive means UTC); None when absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def age_since(stamp: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from `stamp` to `now` (default: the current time)."""
    if stamp is None:
        return None
    return ((now or datetime.now(UTC)) - stamp).total_seconds()
