"""An S3-compatible server on loopback for tests and benchmarks: moto's standalone server,
run as a process of its own (a real HTTP S3 API: SigV4, multipart uploads, presigned URLs).

    with S3Server() as s3:
        s3.create_bucket("fleet")
        env = s3.server_env("s3://fleet/models")   # DEPMAN_MIRROR_* and AWS_* for the server
        ...
        s3.keys("fleet")
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from types import TracebackType
from typing import Any

import boto3
from botocore.client import Config

RUNNING_RE = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT = 60.0
# Credentials moto accepts (any); never real ones.
ACCESS_KEY = "AKIATESTMIRROR000001"
SECRET_KEY = "test-secret-key-never-logged-0000000000"
REGION = "us-east-1"


class S3Server:
    """`python -m moto.server` on 127.0.0.1, a free port."""

    def __init__(self) -> None:
        self.endpoint_url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def __enter__(self) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if not self.endpoint_url:
                    self.lines.append(line)
                    match = RUNNING_RE.search(line)
                    if match:
                        self.endpoint_url = match.group(1)
                        found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        found.wait(START_TIMEOUT)
        if not self.endpoint_url:
            self.__exit__(None, None, None)
            raise RuntimeError("moto server did not start:\n" + "".join(self.lines))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self) -> Any:
        """A boto3 client of this server (the test's own view of the bucket)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        """Every object key of a bucket."""
        answer = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in answer.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads in progress."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return sorted(u["Key"] for u in answer.get("Uploads", []))

    def server_env(self, mirror_url: str, **extra: str) -> dict[str, str]:
        """The environment of a depman server using `mirror_url` on this S3 server."""
        return {
            "DEPMAN_MIRROR_URL": mirror_url,
            "DEPMAN_MIRROR_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            **extra,
        }
