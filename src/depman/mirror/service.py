"""The fleet mirror as the server holds it: where it is, how agents reach a file, how a file
gets there."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from depman.mirror.bucket import Bucket, s3_client
from depman.mirror.fill import TIMEOUT, Filled, FillError, fill_object
from depman.mirror.location import MirrorLocation
from depman.mirror.upstream import Upstream, UpstreamSlots
from depman.settings import ServerSettings

USER_AGENT = "depman-mirror-fill"


@dataclass
class MirrorService:
    """A configured mirror: an S3 bucket the server fills, or a read-only https base."""

    location: MirrorLocation
    fill_mode: str
    bucket: Bucket | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> MirrorService | None:
        """The mirror `DEPMAN_MIRROR_URL` names, or None when unset."""
        if not settings.mirror_url:
            return None
        location = MirrorLocation.parse(settings.mirror_url)
        bucket = None
        if location.writable:
            bucket = Bucket(
                location,
                s3_client(settings.mirror_endpoint_url),
                settings.mirror_presign_seconds,
                settings.mirror_part_bytes,
            )
        return cls(location=location, fill_mode=settings.mirror_fill, bucket=bucket)

    @property
    def writable(self) -> bool:
        return self.bucket is not None

    @property
    def fills_by_itself(self) -> bool:
        """Whether the worker adds new catalog entries on its own.

        A read-only mirror is probed for every entry: a HEAD is cheap, and it is the
        only way to learn what the one who fills it has put there.
        """
        return self.fill_mode == "auto" or not self.writable

    def link(self, sha256: str) -> str:
        """The URL an agent downloads a mirrored file from (presigned for a bucket)."""
        if self.bucket is not None:
            return self.bucket.presigned_get(sha256)
        return self.location.public_url(sha256)

    def agent_host(self) -> str:
        """The host name agents fetch mirror URLs from (for DM_ALLOWED_DOMAINS)."""
        return urlsplit(self.link("0" * 64)).hostname or ""

    def describe(self) -> str:
        """The mirror for logs and the status: no credentials, no signature."""
        kind = "s3" if self.writable else "read-only"
        return f"{self.location.url} ({kind}, fill {self.fill_mode})"

    def store(
        self,
        sha256: str,
        size: int | None,
        upstreams: Sequence[Upstream],
        *,
        progress: Callable[[int], None],
        stop: threading.Event,
        slots: UpstreamSlots,
    ) -> Filled:
        """Fill one file (a bucket) or confirm the one who fills it did (read only)."""
        if self.bucket is not None:
            return fill_object(
                self.bucket, sha256, size, upstreams,
                progress=progress, stop=stop, user_agent=USER_AGENT, slots=slots,
            )
        return self._probe(sha256, size)

    def _probe(self, sha256: str, size: int | None) -> Filled:
        # A one-byte ranged GET, not a HEAD: some static hosts and presigned
        # front-ends answer HEAD differently from GET, or not at all.
        url = self.location.public_url(sha256)
        headers = {"User-Agent": USER_AGENT, "Range": "bytes=0-0"}
        try:
            with httpx.stream("GET", url, timeout=TIMEOUT, follow_redirects=True,
                              headers=headers) as response:
                status = response.status_code
                if status == 206:
                    total = response.headers.get("content-range", "").rpartition("/")[2]
                else:
                    total = response.headers.get("content-length", "")
        except httpx.HTTPError as exc:
            raise FillError(f"mirror unreachable: {type(exc).__name__}") from exc
        if status == 404:
            raise FillError("not in the read-only mirror")
        if status not in (200, 206):
            raise FillError(f"mirror answered HTTP {status}")
        if not total.isdigit():
            raise FillError("mirror answered no size")
        if size is not None and int(total) != size:
            raise FillError(f"mirror holds {total} bytes, the catalog says {size}")
        return Filled(int(total), None)
