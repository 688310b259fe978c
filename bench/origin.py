"""A throwaway nginx origin: its own config, pid and logs in a temp dir, a free port."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import MIB, free_port

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")

NGINX_CONF = """\
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /fast/ {{ alias {root}/; }}
        location /slow/ {{ alias {root}/; limit_rate {limit_rate}; }}
    }}
}}
"""


def find_nginx() -> str | None:
    for name in NGINX_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def make_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; answer their sha256."""
    hasher = hashlib.sha256()
    block = 8 * MIB
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(block, left))
            fh.write(chunk)
            hasher.update(chunk)
            left -= len(chunk)
    path.chmod(0o644)
    return hasher.hexdigest()


@dataclass
class NginxOrigin:
    """nginx serving the files of `root`: `/fast/NAME` unthrottled, `/slow/NAME` rate-limited."""

    root: Path
    limit_rate: str = "40m"
    workers: int = 2

    def __post_init__(self) -> None:
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str, throttled: bool) -> str:
        return f"http://127.0.0.1:{self.port}/{'slow' if throttled else 'fast'}/{name}"

    def __enter__(self) -> NginxOrigin:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx not found: apt-get install nginx-light")
        self._tmp = tempfile.TemporaryDirectory(prefix="depman-bench-nginx-")
        tmp = Path(self._tmp.name)
        self.port = free_port()
        # As root, nginx's workers would switch to `nobody`; keep them as the caller.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, workers=self.workers, tmp=tmp,
                                          port=self.port, root=self.root,
                                          limit_rate=self.limit_rate))
        self._proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # 404 on / means nginx answers
            except OSError as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                    self.__exit__()
                    raise RuntimeError(f"nginx did not start: {exc}\n{err}\n{log}") from exc
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
