"""Deterministic "model" bytes: any slice of a file is computed on demand, never stored.

A file is named by a seed and a size. Its bytes are a 1 MiB random base block
(seeded) rotated by a per-chunk offset, so every MiB differs, a few-hundred-MB
file costs one MiB of RAM, and the origin and the fleet (which needs the real
sha256) agree on every byte without sharing anything but the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache

CHUNK_BYTES = 1 << 20


@lru_cache(maxsize=64)
def _base_block(seed: str) -> bytes:
    return random.Random(seed).randbytes(CHUNK_BYTES)


def _chunk(seed: str, index: int) -> bytes:
    base = _base_block(seed)
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    shift = int.from_bytes(digest, "big") % CHUNK_BYTES
    return base[shift:] + base[:shift]


def iter_content(
    seed: str, size: int, start: int = 0, end: int | None = None
) -> Iterator[bytes]:
    """Yield bytes [start, end) of the file (end defaults to size), in pieces of at most 1 MiB."""
    stop = size if end is None else min(end, size)
    position = max(0, start)
    while position < stop:
        index, offset = divmod(position, CHUNK_BYTES)
        piece = _chunk(seed, index)[offset : min(CHUNK_BYTES, offset + stop - position)]
        yield piece
        position += len(piece)


def content_sha256(seed: str, size: int) -> str:
    """The hex sha256 of the whole file."""
    digest = hashlib.sha256()
    for piece in iter_content(seed, size):
        digest.update(piece)
    return digest.hexdigest()


def read_content(seed: str, size: int, start: int = 0, end: int | None = None) -> bytes:
    """Bytes [start, end) as one object (for small files and tests)."""
    return b"".join(iter_content(seed, size, start, end))
