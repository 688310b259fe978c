"""Agent test fixtures: a live model origin and helpers to make payloads."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from tests.support.origin import ModelOrigin


@pytest.fixture
def origin() -> Iterator[ModelOrigin]:
    with ModelOrigin() as running:
        yield running


def payload(size: int, seed: int = 0) -> tuple[bytes, str]:
    """Random-looking bytes and their sha256."""
    data = os.urandom(size) if seed == 0 else hashlib.sha256(str(seed).encode()).digest() * (
        size // 32 + 1)
    data = data[:size]
    return data, hashlib.sha256(data).hexdigest()
