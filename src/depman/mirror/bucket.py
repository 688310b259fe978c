"""The S3 side of the fleet mirror, through boto3: presigned reads and verified uploads.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
a profile or an instance role) and never pass through depman's settings or logs.
An object under a sha256 key exists only once a multipart upload whose bytes were
verified is completed: an upload that fails verification is aborted, so its parts
never become an object.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

from depman.mirror.location import MirrorLocation

# Parts of a multipart upload (S3 wants 5 MiB at least for every part but the last).
DEFAULT_PART_BYTES = 32 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client for AWS or an S3-compatible endpoint (R2, B2, MinIO).

    Path-style addressing on a custom endpoint (MinIO and most others need it);
    SigV4 everywhere (R2 and B2 accept nothing else).
    """
    # botocore's debug log prints request headers, Authorization included: never below
    # warning, whatever DEPMAN_LOG_LEVEL says.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint_url and not region:
        region = "auto"  # R2's name; MinIO and B2 accept any
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


@dataclass
class Bucket:
    """The mirror's bucket: keys, presigned GETs, uploads."""

    location: MirrorLocation
    client: Any
    presign_seconds: int
    part_bytes: int = DEFAULT_PART_BYTES

    @property
    def name(self) -> str:
        assert self.location.bucket is not None
        return self.location.bucket

    def presigned_get(self, sha256: str) -> str:
        """A GET URL of the object, valid `presign_seconds`; computed locally, no request."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.name, "Key": self.location.key(sha256)},
            ExpiresIn=self.presign_seconds,
        )
        return url

    def stored_size(self, sha256: str) -> int | None:
        """The size of the stored object, or None when there is none."""
        try:
            head = self.client.head_object(Bucket=self.name, Key=self.location.key(sha256))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return int(head["ContentLength"])

    def abort_stale_uploads(self, sha256: str) -> int:
        """Abort multipart uploads left under the key by a fill that died (kill -9)."""
        key = self.location.key(sha256)
        answer = self.client.list_multipart_uploads(Bucket=self.name, Prefix=key)
        stale = [u for u in answer.get("Uploads", []) if u.get("Key") == key]
        for upload in stale:
            self.client.abort_multipart_upload(
                Bucket=self.name, Key=key, UploadId=upload["UploadId"]
            )
        return len(stale)

    def start_upload(self, sha256: str) -> Upload:
        """A multipart upload to the file's key, completed only by `Upload.complete`."""
        key = self.location.key(sha256)
        answer = self.client.create_multipart_upload(
            Bucket=self.name, Key=key, ContentType="application/octet-stream"
        )
        return Upload(self.client, self.name, key, answer["UploadId"])

    def delete(self, sha256: str) -> None:
        """Remove an object (used when a stored object proves to be the wrong size)."""
        self.client.delete_object(Bucket=self.name, Key=self.location.key(sha256))


@dataclass
class Upload:
    """One multipart upload in progress."""

    client: Any
    bucket: str
    key: str
    upload_id: str
    parts: list[dict[str, Any]] = field(default_factory=list)

    def add_part(self, data: bytes | bytearray) -> None:
        number = len(self.parts) + 1
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        """Make the object; call only after the bytes were verified."""
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def abort(self) -> None:
        """Drop the parts: no object appears."""
        self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
        )


def _status(exc: ClientError) -> int:
    meta = exc.response.get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode") or 0)
