"""The mirror's small parts without a network: locations, keys, part sizes, settings."""

from __future__ import annotations

import pytest

from depman.errors import ConfigError
from depman.mirror.bucket import Bucket
from depman.mirror.fill import MAX_PARTS, part_bytes_for
from depman.mirror.location import MirrorLocation
from depman.server.runner import build_settings

SHA = "ab" * 32


def test_s3_and_https_locations() -> None:
    s3 = MirrorLocation.parse("s3://fleet/models/depman/")
    assert s3.writable and s3.bucket == "fleet" and s3.key(SHA) == f"models/depman/sha256/{SHA}"
    assert MirrorLocation.parse("s3://fleet").key(SHA) == f"sha256/{SHA}"
    ro = MirrorLocation.parse("https://cdn.example.com/copy/")
    assert not ro.writable and ro.public_url(SHA) == f"https://cdn.example.com/copy/sha256/{SHA}"
    with pytest.raises(ValueError, match="not a sha256"):
        s3.key("../../etc/passwd")
    with pytest.raises(ValueError):
        MirrorLocation.parse("ftp://host/x")


def test_part_size_grows_for_files_past_the_part_limit() -> None:
    bucket = Bucket(MirrorLocation.parse("s3://b/p"), client=None, presign_seconds=60,
                    part_bytes=32 * 2**20)
    assert part_bytes_for(bucket, None) == 32 * 2**20
    assert part_bytes_for(bucket, 10 * 2**30) == 32 * 2**20
    huge = 500 * 2**30
    assert part_bytes_for(bucket, huge) * MAX_PARTS >= huge


def test_mirror_settings_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="mirror_url must be"):
        build_settings(mirror_url="ftp://fleet/models")
    with pytest.raises(ConfigError, match="mirror_endpoint_url must be"):
        build_settings(mirror_url="s3://fleet/m", mirror_endpoint_url="minio:9000")
    settings = build_settings(mirror_url="s3://fleet/m")
    assert settings.mirror_fill == "auto" and settings.mirror_presign_seconds == 12 * 3600
