"""How long ago something happened, written the way an operator reads it (CLI and dashboard)."""

from __future__ import annotations


def format_age(seconds: float | None) -> str:
    """`42s`, `2m05s`, `3h01m`, `2d00h` (two units at most); `-` for unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"
