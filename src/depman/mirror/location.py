"""Where the fleet mirror lives: an S3 bucket and prefix, or the base URL of a read-only copy."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

SHA256_HEX_CHARS = 64


@dataclass(frozen=True)
class MirrorLocation:
    """`DEPMAN_MIRROR_URL`, parsed.

    `s3://bucket/prefix`: the server fills the bucket and presigns each download.
    `https://host/base`: someone else fills it; objects are read at `<base>/sha256/<hex>`.
    """

    url: str
    bucket: str | None = None
    prefix: str = ""
    base_url: str | None = None

    @classmethod
    def parse(cls, url: str) -> MirrorLocation:
        parts = urlsplit(url)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"mirror URL {url!r} names no bucket")
            return cls(url=url, bucket=parts.netloc, prefix=parts.path.strip("/"))
        if parts.scheme in ("https", "http") and parts.netloc:
            return cls(url=url, base_url=url.rstrip("/"))
        raise ValueError(f"mirror URL must be s3://bucket/prefix or https://..., got {url!r}")

    @property
    def writable(self) -> bool:
        """The server fills an S3 mirror; an https one is read only."""
        return self.bucket is not None

    def key(self, sha256: str) -> str:
        """The object key of a file: `<prefix>/sha256/<hex>`."""
        if len(sha256) != SHA256_HEX_CHARS or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return f"{self.prefix}/sha256/{sha256}" if self.prefix else f"sha256/{sha256}"

    def public_url(self, sha256: str) -> str:
        """The URL of a file in a read-only https mirror."""
        assert self.base_url is not None
        return f"{self.base_url}/sha256/{quote(sha256)}"
