"""An S3-compatible server on loopback for tests and benchmarks: moto's standalone server,
run as a process of its own (a real HTTP S3 API: SigV4, multipart uploads, presigned URLs).

    with S3Server() as s3:
        s3.create_bucket("fleet")
        env = s3.server_env("s3://fleet/models")   # DEPMAN_MIRROR_* and AWS_* for the server
        ...
        s3.keys("fleet")
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

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


class BucketTap:
    """An HTTP hop in front of the S3 server that records every request the bucket gets.

    The mirror's endpoint is `endpoint_url` (host `localhost`, so its URLs never share
    an origin with a 127.0.0.1 upstream). It can answer presigned GETs 403 as S3 does
    once a URL has expired (`deny_reads`), and hold presigned GETs until `hold_reads`
    of them are in progress at once (then all go on; `released` is set).
    """

    def __init__(self, target_url: str, host: str = "localhost") -> None:
        self.target = urlsplit(target_url)
        self.host = host
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path?query, headers
        self.deny_reads = False
        self.hold_reads = 0
        self.reading = 0
        self.max_reading = 0
        self.released = threading.Event()
        self._changed = threading.Condition(self.lock)
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def reads(self) -> list[dict[str, str]]:
        """Headers of the presigned GETs (agents' reads) so far."""
        with self.lock:
            return [h for m, p, h in self.requests if m == "GET" and "X-Amz-Signature=" in p]

    def __enter__(self) -> BucketTap:
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                read = self.command == "GET" and "X-Amz-Signature=" in self.path
                with tap.lock:
                    tap.requests.append((self.command, self.path, headers))
                body = self.rfile.read(int(headers.get("content-length") or 0))
                if read:
                    tap.enter_read()
                try:
                    if read and tap.deny_reads:
                        self._answer(403, {"Content-Type": "application/xml"}, DENIED)
                        return
                    conn = http.client.HTTPConnection(tap.target.hostname, tap.target.port,
                                                      timeout=60)
                    try:
                        sent = {k: v for k, v in self.headers.items()
                                if k.lower() not in ("expect", "connection")}
                        conn.request(self.command, self.path, body=body, headers=sent)
                        answer = conn.getresponse()
                        data = answer.read()
                        kept = {k: v for k, v in answer.getheaders()
                                if k.lower() not in ("transfer-encoding", "connection",
                                                     "content-length")}
                        self._answer(answer.status, kept, data,
                                     length=answer.getheader("Content-Length"))
                    finally:
                        conn.close()
                finally:
                    if read:
                        tap.leave_read()

            def _answer(self, status: int, headers: dict[str, str], data: bytes,
                        length: str | None = None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                head = self.command == "HEAD"
                self.send_header("Content-Length", length if head and length else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="bucket-tap").start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def release(self) -> None:
        """Let every held read go on (and the next ones, until `released` is cleared)."""
        with self._changed:
            self.released.set()
            self._changed.notify_all()

    def enter_read(self) -> None:
        with self._changed:
            self.reading += 1
            self.max_reading = max(self.max_reading, self.reading)
            if self.reading >= self.hold_reads:
                self.released.set()
                self._changed.notify_all()
            else:
                self._changed.wait_for(self.released.is_set, timeout=HOLD_TIMEOUT)

    def leave_read(self) -> None:
        with self._changed:
            self.reading -= 1


# What S3 answers a presigned URL past its expiry.
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b"<Message>Request has expired</Message></Error>")
HOLD_TIMEOUT = 120.0
