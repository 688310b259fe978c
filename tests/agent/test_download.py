"""The download engine against a real local origin."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from depman.agent.download import DownloadOptions, DownloadSpec, download_file
from depman.agent.errors import (
    DomainNotAllowed,
    DownloadError,
    DownloadInterrupted,
    InsufficientDiskSpace,
    VerificationError,
)
from depman.agent.files import Sidecar
from depman.agent.pieces import plan_pieces
from depman.agent.sidefiles import partial_path, sidecar_path
from tests.agent.conftest import payload
from tests.agent.relay import Relay
from tests.support.origin import ModelOrigin

MiB = 1024 * 1024
SRC = str(Path(__file__).resolve().parents[2] / "src")
HOSTS = ("127.0.0.1", "localhost")


def options(**kw: object) -> DownloadOptions:
    base: dict[str, object] = {"allowed_domains": HOSTS, "connections": 1,
                               "min_segment_bytes": MiB, "base_delay": 0.01, "max_delay": 0.05}
    base.update(kw)
    return DownloadOptions(**base)  # type: ignore[arg-type]


def test_single_stream_download_and_verify(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(3 * MiB + 17)
    origin.add("/m/a.bin", data)
    dest = tmp_path / "models" / "a.bin"
    result = download_file(DownloadSpec(origin.url("/m/a.bin"), dest, sha, len(data)), options())
    assert dest.read_bytes() == data
    assert result.sha256 == sha and not result.segmented
    assert not partial_path(dest.with_name("a.bin")).exists()
    assert not sidecar_path(dest.with_name("a.bin")).exists()
    assert origin.bytes_served("/m/a.bin") == len(data)


def ranged_spans(origin: ModelOrigin, path: str) -> list[tuple[int, int]]:
    """Inclusive byte spans of the ranged requests that carried a body (not the probe)."""
    spans = []
    for r in origin.requests_for(path):
        if r.status == 206 and r.bytes_sent > 1 and r.range:
            first, _, last = r.range.removeprefix("bytes=").partition("-")
            spans.append((int(first), int(last)))
    return sorted(spans)


def test_segmented_download_uses_several_connections(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(12 * MiB + 5)
    origin.add("/m/big.bin", data, rate=8 * MiB)  # slow enough for the connections to overlap
    dest = tmp_path / "big.bin"
    with Relay(origin.port) as relay:
        result = download_file(DownloadSpec(relay.url("/m/big.bin"), dest, sha, len(data)),
                               options(connections=4))
    assert result.segmented and dest.read_bytes() == data
    spans = ranged_spans(origin, "/m/big.bin")
    assert len(spans) == 12  # several pieces per connection (12 MiB, 1 MiB pieces)
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))  # no overlap
    assert relay.max_active >= 4  # four pieces in flight at once
    assert relay.accepted == 5  # the probe, then one keep-alive connection per worker
    assert origin.bytes_served("/m/big.bin") == len(data) + 1  # + the 1-byte probe


def test_connection_dropped_mid_piece_resumes_that_piece(origin: ModelOrigin,
                                                         tmp_path: Path) -> None:
    data, sha = payload(8 * MiB)
    drop = MiB // 2 + 1000
    origin.add("/m/d.bin", data, drop_after=drop)  # the first piece's body stops there, once
    dest = tmp_path / "d.bin"
    result = download_file(DownloadSpec(origin.url("/m/d.bin"), dest, sha, len(data)),
                           options(connections=4))
    assert result.segmented and dest.read_bytes() == data
    starts = [first for first, _ in ranged_spans(origin, "/m/d.bin")]
    assert [s for s in starts if s % MiB] == [next(s for s in starts if s % MiB)]
    assert next(s for s in starts if s % MiB) % MiB == drop  # the rest of that piece only
    assert origin.bytes_served("/m/d.bin") == len(data) + 1  # no byte fetched twice


def test_slow_connection_at_the_tail_is_split(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(64 * MiB)
    origin.add("/m/t.bin", data)
    dest = tmp_path / "t.bin"
    planned = {p.start for p in plan_pieces([(0, len(data))], 2, 4 * MiB)}
    # Connection 1 is the probe; connection 2, a worker's, crawls like a bad CDN edge.
    with Relay(origin.port, slow_connection=2, slow_rate=2 * MiB) as relay:
        result = download_file(DownloadSpec(relay.url("/m/t.bin"), dest, sha, len(data)),
                               options(connections=2, min_segment_bytes=4 * MiB,
                                       chunk_bytes=64 * 1024))
        slow_bytes = relay.sent[2]
    assert result.segmented and dest.read_bytes() == data
    # The fast worker did the rest of the file, then took over half of what the slow
    # one had left: requests that start inside a planned piece, and the slow
    # connection carried less than the smallest piece it could have had (4 MiB).
    assert [s for s, _ in ranged_spans(origin, "/m/t.bin") if s not in planned]
    assert slow_bytes < 3 * MiB + MiB // 2


def test_killed_download_resumes_piece_by_piece(origin: ModelOrigin, tmp_path: Path) -> None:
    size = 8 * MiB
    data, sha = payload(size)
    origin.add("/m/k.bin", data, rate=MiB)
    dest = tmp_path / "k.bin"
    cmd = [sys.executable, "-m", "depman.agent", "fetch", origin.url("/m/k.bin"), str(dest),
           "--sha256", sha, "--size", str(size), "--connections", "4", "--min-segment", "1MiB",
           "--allow-domain", "127.0.0.1"]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while origin.bytes_served("/m/k.bin") < 3 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    sidecar = json.loads(sidecar_path(dest.with_name("k.bin")).read_text())
    assert sidecar["mode"] == "pieces"
    have = [(s, e) for s, e in sidecar["have"]]
    assert len(have) >= 2  # several pieces were in progress, each recorded on its own
    on_disk = partial_path(dest.with_name("k.bin")).read_bytes()
    assert all(on_disk[s:e] == data[s:e] for s, e in have)  # what it claims is really there
    origin.reset_stats()
    origin.files["/m/k.bin"].rate = None
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert dest.read_bytes() == data
    kept = sum(e - s for s, e in have)
    assert int(second.stdout.split("resumed_from=")[1]) == kept
    for first_byte, last_byte in ranged_spans(origin, "/m/k.bin"):
        assert not any(first_byte < e and s <= last_byte for s, e in have)
    assert origin.bytes_served("/m/k.bin") == size - kept + 1


def test_old_segment_sidecar_resumes(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(8 * MiB)
    entry = origin.add("/m/o.bin", data)
    dest = tmp_path / "o.bin"
    spec = DownloadSpec(origin.url("/m/o.bin"), dest, sha, len(data))
    # What an agent before piece scheduling left behind: four segments, partly done.
    segments = [[0, 2 * MiB, 2 * MiB], [2 * MiB, 4 * MiB, MiB], [4 * MiB, 6 * MiB, 0],
                [6 * MiB, 8 * MiB, MiB // 2]]
    partial = bytearray(len(data))
    for start, _, done in segments:
        partial[start:start + done] = data[start:start + done]
    partial_path(dest.with_name("o.bin")).write_bytes(bytes(partial))
    Sidecar(sidecar_path(dest.with_name("o.bin"))).save(
        {"mode": "segmented", "etag": entry.etag, "total": len(data), "segments": segments},
        spec)
    result = download_file(spec, options(connections=4))
    kept = 3 * MiB + MiB // 2
    assert dest.read_bytes() == data and result.resumed_from == kept
    assert origin.bytes_served("/m/o.bin") == len(data) - kept + 1


@pytest.mark.parametrize("case", ["past the end", "no partial"])
def test_untrustworthy_sidecar_restarts_from_zero(origin: ModelOrigin, tmp_path: Path,
                                                  case: str) -> None:
    data, sha = payload(4 * MiB)
    entry = origin.add("/m/g.bin", data)
    dest = tmp_path / "g.bin"
    spec = DownloadSpec(origin.url("/m/g.bin"), dest, sha, len(data))
    have = [[0, 99 * MiB]] if case == "past the end" else [[0, MiB]]
    if case == "past the end":
        partial_path(dest.with_name("g.bin")).write_bytes(b"\0" * len(data))
    Sidecar(sidecar_path(dest.with_name("g.bin"))).save(
        {"mode": "pieces", "etag": entry.etag, "total": len(data), "have": have}, spec)
    result = download_file(spec, options(connections=4))
    assert dest.read_bytes() == data and result.resumed_from == 0
    assert origin.bytes_served("/m/g.bin") == len(data) + 1


def test_sha_mismatch_fails_without_touching_final_path(origin: ModelOrigin,
                                                        tmp_path: Path) -> None:
    data, sha = payload(2 * MiB)
    origin.add("/m/bad.bin", data, corrupt="always")
    dest = tmp_path / "bad.bin"
    dest.write_bytes(b"old")
    with pytest.raises(VerificationError, match="sha256 mismatch"):
        download_file(DownloadSpec(origin.url("/m/bad.bin"), dest, sha, len(data)), options())
    assert dest.read_bytes() == b"old"
    assert not partial_path(dest.with_name("bad.bin")).exists()


def test_segmented_mismatch_retries_once_as_single_stream(origin: ModelOrigin,
                                                          tmp_path: Path) -> None:
    data, sha = payload(4 * MiB)
    origin.add("/m/cdn.bin", data, corrupt="ranged")  # only ranges not starting at 0 are bad
    dest = tmp_path / "cdn.bin"
    result = download_file(DownloadSpec(origin.url("/m/cdn.bin"), dest, sha, len(data)),
                           options(connections=4))
    assert not result.segmented and dest.read_bytes() == data
    full = [r for r in origin.requests_for("/m/cdn.bin") if r.range is None]
    assert len(full) == 1


def test_resume_after_dropped_connection_with_fresh_redirect(origin: ModelOrigin,
                                                             tmp_path: Path) -> None:
    data, sha = payload(3 * MiB)
    origin.add("/m/r.bin", data, redirect_host="localhost", drop_after=MiB,
               expire_after_drop=True)
    dest = tmp_path / "r.bin"
    result = download_file(DownloadSpec(origin.url("/m/r.bin"), dest, sha, len(data)), options())
    assert dest.read_bytes() == data and result.resumed_from == MiB
    catalog = [r for r in origin.requests_for("/m/r.bin") if r.host.startswith("127.0.0.1")]
    assert len(catalog) == 2  # the resume asked the catalog URL again for a fresh signed URL
    resumed = [r for r in origin.requests_for("/m/r.bin") if r.range == f"bytes={MiB}-"]
    assert resumed and resumed[-1].headers.get("if-range") == origin.files["/m/r.bin"].etag
    assert origin.bytes_served("/m/r.bin") == len(data)


def test_expired_signed_url_403_is_retried_with_fresh_redirect(origin: ModelOrigin,
                                                               tmp_path: Path) -> None:
    data, sha = payload(4 * MiB)
    entry = origin.add("/m/s.bin", data, redirect_host="localhost", drop_after=MiB // 2,
                       expire_after_drop=True)
    assert entry.etag
    dest = tmp_path / "s.bin"
    download_file(DownloadSpec(origin.url("/m/s.bin"), dest, sha, len(data)),
                  options(connections=4))
    assert dest.read_bytes() == data
    statuses = [r.status for r in origin.requests_for("/m/s.bin")]
    assert 403 in statuses  # a segment hit the expired URL and was re-resolved, not failed


def test_200_answer_to_range_restarts_cleanly(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(2 * MiB)
    origin.add("/m/nr.bin", data, ranges=False, drop_after=MiB // 2)
    dest = tmp_path / "nr.bin"
    result = download_file(DownloadSpec(origin.url("/m/nr.bin"), dest, sha, len(data)),
                           options(connections=4))
    assert dest.read_bytes() == data and result.resumed_from == 0


def test_partial_larger_than_expected_is_discarded(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(MiB)
    origin.add("/m/p.bin", data)
    dest = tmp_path / "p.bin"
    partial_path(dest.with_name("p.bin")).write_bytes(b"x" * (2 * MiB))
    download_file(DownloadSpec(origin.url("/m/p.bin"), dest, sha, len(data)), options())
    assert dest.read_bytes() == data


def test_size_mismatch_with_catalog_is_refused(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(MiB)
    origin.add("/m/z.bin", data)
    with pytest.raises(VerificationError, match="Size mismatch"):
        download_file(DownloadSpec(origin.url("/m/z.bin"), tmp_path / "z.bin", sha, MiB + 1),
                      options())
    assert not (tmp_path / "z.bin").exists()


def test_short_body_is_retried_then_fails_clearly(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(MiB)
    origin.add("/m/short.bin", data, ranges=False, short_body=1000)
    with pytest.raises(DownloadError, match="closed early"):
        download_file(DownloadSpec(origin.url("/m/short.bin"), tmp_path / "s.bin", sha),
                      options(max_attempts=3))
    assert not (tmp_path / "s.bin").exists()


def test_5xx_with_retry_after_is_retried(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(1000)
    origin.add("/m/e.bin", data)
    origin.fail_next("/m/e.bin", 503, count=2, retry_after=0)
    download_file(DownloadSpec(origin.url("/m/e.bin"), tmp_path / "e.bin", sha), options())
    assert [r.status for r in origin.requests_for("/m/e.bin")] == [503, 503, 200]


def test_404_fails_at_once(origin: ModelOrigin, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(DownloadSpec(origin.url("/missing"), tmp_path / "x.bin"), options())
    assert len(origin.requests) == 1


def test_redirect_to_disallowed_domain_is_refused(origin: ModelOrigin, tmp_path: Path) -> None:
    origin.add("/m/a.bin", b"abc", redirect_host="localhost")
    with pytest.raises(DomainNotAllowed, match="Download domain not allowed: localhost"):
        download_file(DownloadSpec(origin.url("/m/a.bin"), tmp_path / "a.bin"),
                      options(allowed_domains=["127.0.0.1"]))
    assert all(r.host.startswith("127.0.0.1") for r in origin.requests)  # never fetched


def test_authorization_only_sent_to_catalog_host(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(3 * MiB)
    origin.add("/m/a.bin", data, redirect_host="localhost", require_auth="Bearer hf_secret")
    download_file(DownloadSpec(origin.url("/m/a.bin"), tmp_path / "a.bin", sha, len(data),
                               authorization="Bearer hf_secret"), options(connections=3))
    catalog = [r for r in origin.requests if r.host.startswith("127.0.0.1")]
    cdn = [r for r in origin.requests if r.host.startswith("localhost")]
    assert catalog and all(r.authorization == "Bearer hf_secret" for r in catalog)
    assert cdn and all(r.authorization is None for r in cdn)


def test_ensure_space_is_asked_before_writing(origin: ModelOrigin, tmp_path: Path) -> None:
    data, _ = payload(MiB)
    origin.add("/m/a.bin", data)

    def no_room(need: int) -> None:
        raise InsufficientDiskSpace(f"need {need}")

    with pytest.raises(InsufficientDiskSpace, match="Insufficient disk space"):
        download_file(DownloadSpec(origin.url("/m/a.bin"), tmp_path / "a.bin"),
                      options(ensure_space=no_room))
    assert not partial_path(tmp_path / "a.bin").exists()


def test_stop_interrupts_at_resumable_point_then_resumes(origin: ModelOrigin,
                                                         tmp_path: Path) -> None:
    data, sha = payload(4 * MiB)
    origin.add("/m/slow.bin", data, rate=4 * MiB)
    dest = tmp_path / "slow.bin"
    stop = threading.Event()
    seen = threading.Event()

    from depman.agent.progress import Progress

    class StopHalfway(Progress):
        def add(self, n: int) -> None:
            super().add(n)
            if self.bytes_done >= MiB:
                stop.set()
                seen.set()

    spec = DownloadSpec(origin.url("/m/slow.bin"), dest, sha, len(data))
    with pytest.raises(DownloadInterrupted):
        download_file(spec, options(connections=4, stop=stop, progress=StopHalfway("x"),
                                    chunk_bytes=64 * 1024))
    assert seen.is_set() and not dest.exists()
    first = origin.bytes_served("/m/slow.bin")
    result = download_file(spec, options(connections=4))
    assert dest.read_bytes() == data and result.resumed_from > 0
    assert origin.bytes_served("/m/slow.bin") - first < len(data) - result.resumed_from + 4096


def test_stop_on_a_slow_link_comes_within_a_read(origin: ModelOrigin, tmp_path: Path) -> None:
    data, sha = payload(4 * MiB)
    origin.add("/m/crawl.bin", data, rate=128 * 1024)  # 1 MiB chunks would take 8 s each
    dest = tmp_path / "crawl.bin"
    stop = threading.Event()
    from depman.agent.progress import Progress

    progress = Progress("crawl")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            download_file(DownloadSpec(origin.url("/m/crawl.bin"), dest, sha, len(data)),
                          options(connections=2, stop=stop, progress=progress))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while progress.bytes_done == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert progress.bytes_done > 0  # progress shows well before a 1 MiB chunk could fill
    stop.set()
    stopped_at = time.monotonic()
    thread.join(10)
    assert time.monotonic() - stopped_at < 2.0
    assert outcome and isinstance(outcome[0], DownloadInterrupted)
    assert sidecar_path(dest.with_name("crawl.bin")).exists()
