"""The source fallback of one download against a real local origin (in process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from depman.agent.download_types import DownloadOptions, DownloadSpec
from depman.agent.errors import DownloadError
from depman.agent.fallback import (
    MIRROR,
    UPSTREAM,
    BadSources,
    SourcesReport,
    download_from_sources,
    sources_of,
)
from depman.agent.progress import Progress
from tests.agent.conftest import payload
from tests.support.origin import ModelOrigin

KiB = 1024
HOSTS = ("127.0.0.1", "localhost")


def options(**kw: object) -> DownloadOptions:
    base: dict[str, object] = {"allowed_domains": HOSTS, "connections": 1,
                               "min_segment_bytes": 1024 * KiB, "base_delay": 0.01,
                               "max_delay": 0.05, "progress": Progress("t")}
    base.update(kw)
    return DownloadOptions(**base)  # type: ignore[arg-type]


def test_sources_order_mirror_first_then_url_then_sources() -> None:
    resolved = {"url": "https://bucket.test/sha256/ab", "mirror": True,
                "sources": ["https://hf.test/a", "https://b.test/a", "https://hf.test/a", 7,
                            "ftp://c.test/a", "https://d.test/a b"]}
    got = [(s.url, s.kind) for s in sources_of(resolved)]
    assert got == [("https://bucket.test/sha256/ab", MIRROR), ("https://hf.test/a", UPSTREAM),
                   ("https://b.test/a", UPSTREAM)]
    assert [s.kind for s in sources_of({"url": "https://hf.test/a"})] == [UPSTREAM]


def test_token_goes_to_the_upstream_origin_only_and_bytes_are_counted(
    origin: ModelOrigin, tmp_path: Path
) -> None:
    data, sha = payload(200 * KiB, seed=3)
    origin.add("/mirror/a.bin", data, corrupt="always")  # the mirror holds bad bytes
    origin.add("/hf/a.bin", data)
    origin.fail_next("/hf/a.bin", 503)
    origin.add("/other/a.bin", data)
    resolved = {"url": origin.url("/mirror/a.bin", host="localhost"), "mirror": True,
                "sources": [origin.url("/hf/a.bin"), origin.url("/other/a.bin", host="localhost")]}
    report = SourcesReport()
    bad = BadSources()
    spec = DownloadSpec("", tmp_path / "a.bin", sha, len(data), authorization="Bearer tok",
                        label="a")
    download_from_sources(spec, sources_of(resolved), options(), bad, report, 30)
    assert (tmp_path / "a.bin").read_bytes() == data
    # The token reached only the upstream url's own origin, never the mirror or another host.
    for r in origin.requests:
        assert (r.authorization is not None) == (r.file_path == "/hf/a.bin"), r
    fields = report.fields(succeeded=True)
    assert fields["servedBy"] == {"kind": UPSTREAM, "host": "localhost"}
    assert fields["bytesBySource"] == {MIRROR: len(data), UPSTREAM: len(data)}
    assert fields["badSources"] == [{"host": "localhost", "reason": "sha256_mismatch"},
                                    {"host": "127.0.0.1", "reason": "http_5xx"}]
    # The mirror served wrong bytes: it is not asked for this file again.
    assert bad.refused(sha, resolved["url"]) and not bad.refused(sha, origin.url("/hf/a.bin"))
    (tmp_path / "a.bin").unlink()
    again = SourcesReport()
    download_from_sources(spec, sources_of(resolved), options(), bad, again, 30)
    assert len(origin.requests_for("/mirror/a.bin")) == 1
    assert again.served_by is not None and again.served_by.url == origin.url("/hf/a.bin")


def test_all_sources_failing_for_a_while_is_retryable(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(50 * KiB, seed=4)
    for path in ("/a.bin", "/b.bin"):
        origin.add(path, data)
        origin.fail_next(path, 503)
    spec = DownloadSpec("", tmp_path / "x.bin", sha, len(data), label="x")
    sources = sources_of({"url": origin.url("/a.bin"), "sources": [origin.url("/b.bin")]})
    with pytest.raises(DownloadError) as failed:
        download_from_sources(spec, sources, options(), BadSources(), SourcesReport(), 30)
    assert failed.value.retryable and "All 2 sources failed" in failed.value.message
    # The next attempt (the item's retry) finds both answering again.
    download_from_sources(spec, sources, options(), BadSources(), SourcesReport(), 30)
    assert (tmp_path / "x.bin").read_bytes() == data


def test_a_source_trickling_under_the_floor_is_left_for_the_next(
    origin: ModelOrigin, tmp_path: Path
) -> None:
    data, sha = payload(400 * KiB, seed=5)
    origin.add("/slow.bin", data, rate=16 * KiB)  # would take 25 s
    origin.add("/fast.bin", data)
    spec = DownloadSpec("", tmp_path / "s.bin", sha, len(data), label="s")
    sources = sources_of({"url": origin.url("/slow.bin"),
                          "sources": [origin.url("/fast.bin", host="localhost")]})
    report = SourcesReport()
    download_from_sources(spec, sources, options(stall_bytes_per_second=64 * KiB,
                                                 stall_seconds=1), BadSources(), report, 30)
    assert (tmp_path / "s.bin").read_bytes() == data
    assert report.bad == [("127.0.0.1", "stalled")]
    # The fast source resumed where the slow one stopped: every byte came once.
    assert report.bytes_by_kind[UPSTREAM] == len(data)
    assert 0 < origin.bytes_served("/fast.bin") < len(data)
    assert len(origin.requests_for("/slow.bin")) == 1


def test_the_next_source_resumes_the_bytes_the_last_one_wrote(
    origin: ModelOrigin, tmp_path: Path
) -> None:
    data, sha = payload(400 * KiB, seed=6)
    origin.add("/a.bin", data, stall_after=100 * KiB)
    origin.add("/b.bin", data, etag='"another-host-etag"')
    spec = DownloadSpec("", tmp_path / "r.bin", sha, len(data), label="r")
    sources = sources_of({"url": origin.url("/a.bin"),
                          "sources": [origin.url("/b.bin", host="localhost")]})
    report = SourcesReport()
    download_from_sources(spec, sources, options(timeout=1, stall_seconds=1), BadSources(),
                          report, 30)
    assert (tmp_path / "r.bin").read_bytes() == data
    (resumed,) = origin.requests_for("/b.bin")
    assert resumed.range == f"bytes={100 * KiB}-" and "if-range" not in resumed.headers
    assert resumed.bytes_sent == len(data) - 100 * KiB
    assert report.bad == [("127.0.0.1", "stalled")]


def test_bytes_from_two_sources_that_do_not_match_start_over_from_zero(
    origin: ModelOrigin, tmp_path: Path
) -> None:
    data, sha = payload(400 * KiB, seed=7)
    # The first source sends wrong bytes (at the middle), then stalls past them.
    origin.add("/a.bin", data, corrupt="always", stall_after=300 * KiB)
    origin.add("/b.bin", data)
    spec = DownloadSpec("", tmp_path / "m.bin", sha, len(data), label="m")
    sources = sources_of({"url": origin.url("/a.bin"),
                          "sources": [origin.url("/b.bin", host="localhost")]})
    report = SourcesReport()
    bad = BadSources()
    download_from_sources(spec, sources, options(timeout=1, stall_seconds=1), bad, report, 30)
    assert (tmp_path / "m.bin").read_bytes() == data
    # Resumed first; the mismatch of the mixed file sent it back to zero on the same source,
    # which is not blamed for the other's bytes.
    assert [r.range for r in origin.requests_for("/b.bin")] == [f"bytes={300 * KiB}-", None]
    assert report.bad == [("127.0.0.1", "stalled")]
    assert not bad.refused(sha, origin.url("/b.bin", host="localhost"))
