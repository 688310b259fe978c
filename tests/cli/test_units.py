"""Byte sizes and ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from depman.ages import format_age
from depman.client.units import (
    age_since,
    format_bytes,
    parse_byte_size,
    parse_timestamp,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("150MB", 150 * 1024**2),
        ("150 MB", 150 * 1024**2),
        ("6.5GiB", int(6.5 * 1024**3)),
        ("10GB", 10 * 1024**3),
        ("10Gi", 10 * 1024**3),
        ("2tib", 2 * 1024**4),
        ("1.5 GB", int(1.5 * 1024**3)),
        ("512K", 512 * 1024),
        ("7B", 7),
        (" 3 MiB ", 3 * 1024**2),
    ],
)
def test_parse_byte_size_accepts_ints_and_unit_strings(text: int | str, expected: int) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "ten GB", "5 XB", "-1", "5i", "1.2.3GB", "5 G B"])
def test_parse_byte_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a byte size"):
        parse_byte_size(text)


def test_parse_byte_size_rejects_negative_ints_and_bools() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_byte_size(-1)
    with pytest.raises(ValueError, match="boolean"):
        parse_byte_size(True)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (6.5 * 1024**3, "6.5 GiB")],
)
def test_format_bytes(value: int | None, text: str) -> None:
    assert format_bytes(None if value is None else int(value)) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (42.7, "42s"),
        (125, "2m05s"),
        (3 * 3600 + 60, "3h01m"),
        (2 * 86400, "2d00h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_timestamps_parse_with_z_and_naive_as_utc() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_timestamp("2025-01-02T03:04:00Z") == now - timedelta(seconds=5)
    assert parse_timestamp("2025-01-02T03:04:00") == now - timedelta(seconds=5)
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None
    assert age_since(parse_timestamp("2025-01-02T03:04:00+00:00"), now) == 5.0
    assert age_since(None, now) is None
