"""The server process's collector settings (server/runner.py: full collections stalled requests)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from depman.server.runner import _tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_startup_heap_is_frozen_and_young_collections_are_rarer() -> None:
    _tune_gc()
    assert gc.get_freeze_count() > 10_000  # the imported modules at least
    assert gc.get_threshold()[0] == 10_000


@pytest.mark.usefixtures("restore_gc")
def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    _tune_gc()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2
