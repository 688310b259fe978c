"""How the dashboard writes bytes, rates and ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from depman.server.dashboard.format import (
    format_ago,
    format_bytes,
    format_duration,
    format_percent,
    format_rate,
    format_seconds_ago,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (200 * 1024**3, "200 GiB"),
        (3 * 1024**5, "3.0 PiB"),
        (2048 * 1024**5, "2048 PiB"),
    ],
)
def test_bytes(value: int | None, text: str) -> None:
    assert format_bytes(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0.4, "0s ago"),
        (12.9, "12s ago"),
        (125, "2m05s ago"),
        (7300, "2h01m ago"),
        (3 * 86400, "3d00h ago"),
        (-5, "0s ago"),
    ],
)
def test_age(seconds: float | None, text: str) -> None:
    assert format_seconds_ago(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (45, "45s"), (75, "1m 15s"), (3 * 3600 + 120, "3h 02m"), (50 * 3600, "2d 02h")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_rate_percent_and_ago() -> None:
    assert format_rate(85 * 1024**2) == "85.0 MiB/s"
    assert format_rate(None) == "—"
    assert format_percent(0.423) == "42%"
    assert format_percent(None) == "—"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert format_ago(now - timedelta(seconds=30), now) == "30s ago"
    assert format_ago(None, now) == "—"
