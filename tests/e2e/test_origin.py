"""The demo origin on its own: deterministic content, ranges, redirect, token, stats."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from depman.demo.content import CHUNK_BYTES, content_sha256, iter_content, read_content
from depman.demo.origin import OriginServer, parse_range, run_origin_in_thread

SIZE = 3 * CHUNK_BYTES + 12345


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    with run_origin_in_thread(token="tok") as server:
        yield server


def url(server: OriginServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}{path}"


def test_content_is_deterministic_and_slices_agree() -> None:
    whole = read_content("s", SIZE)
    assert len(whole) == SIZE
    assert whole == read_content("s", SIZE)
    assert whole != read_content("t", SIZE)
    assert read_content("s", SIZE, CHUNK_BYTES - 7, 2 * CHUNK_BYTES + 9) == whole[
        CHUNK_BYTES - 7 : 2 * CHUNK_BYTES + 9
    ]
    assert hashlib.sha256(whole).hexdigest() == content_sha256("s", SIZE)
    assert all(len(piece) <= CHUNK_BYTES for piece in iter_content("s", SIZE))
    # Different chunks of one file differ (a rotated base block, not a repeat).
    assert whole[:CHUNK_BYTES] != whole[CHUNK_BYTES : 2 * CHUNK_BYTES]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-5", (95, 100)),
        ("bytes=90-500", (90, 100)),
        ("bytes=1-2,5-6", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


def test_parse_range_unsatisfiable() -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=100-", 100)


def test_whole_file_and_range(origin: OriginServer) -> None:
    path = f"/files/s/{SIZE}/model.safetensors"
    whole = httpx.get(url(origin, path))
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == content_sha256("s", SIZE)
    part = httpx.get(url(origin, path), headers={"Range": f"bytes={SIZE - 100}-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert part.content == whole.content[-100:]
    bad = httpx.get(url(origin, path), headers={"Range": f"bytes={SIZE}-"})
    assert bad.status_code == 416
    head = httpx.head(url(origin, path))
    assert head.headers["content-length"] == str(SIZE)
    assert head.headers["accept-ranges"] == "bytes"


def test_private_route_wants_the_token(origin: OriginServer) -> None:
    path = "/private/s/1000/lora.safetensors"
    assert httpx.get(url(origin, path)).status_code == 401
    assert httpx.get(url(origin, path), headers={"Authorization": "Bearer no"}).status_code == 403
    ok = httpx.get(url(origin, path), headers={"Authorization": "Bearer tok"})
    assert ok.status_code == 200
    assert ok.content == read_content("s", 1000)


def test_redirect_goes_to_the_other_host_name(origin: OriginServer) -> None:
    first = httpx.get(url(origin, "/redirect/s/1000/vae.safetensors?bps=100000"))
    assert first.status_code == 302
    assert first.headers["location"] == url(
        origin, "/files/s/1000/vae.safetensors?bps=100000", host="localhost"
    )
    back = httpx.get(url(origin, "/redirect/s/1000/vae.safetensors", host="localhost"))
    assert back.headers["location"].startswith(f"http://127.0.0.1:{origin.port}/files/")
    final = httpx.get(first.headers["location"])
    assert final.content == read_content("s", 1000)


def test_unknown_path_is_404_and_stats_count_bytes(origin: OriginServer) -> None:
    assert httpx.get(url(origin, "/nope")).status_code == 404
    httpx.get(url(origin, "/files/s/4096/a.bin"))
    stats = httpx.get(url(origin, "/_stats")).json()
    assert stats["bytesServed"] == 4096
    assert stats["byRoute"] == {"files": 1}
