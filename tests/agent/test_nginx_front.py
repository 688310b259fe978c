"""docs/server.md's nginx block, as written there, in front of a real server and agent.

The block is read from the document (so the two cannot drift apart), given a
loopback port, a self-signed certificate and the test server as its upstream, and
run by the real nginx. An agent talking HTTPS to it takes an agent update: the
`agentUpdate.downloadUrl` the server builds behind the proxy must lead back
through the proxy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from depman.agent import protocol as p
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, setup_fleet
from tests.agent.test_self_update import NEW, agent_version, install_zipapp, publish
from tests.support.agent_builds import pyz_with, sha256_hex
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"
NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(NGINX is None or OPENSSL is None, reason="needs nginx and openssl")


def documented_block() -> str:
    """The nginx block of the *Behind a reverse proxy* section."""
    section = DOC.read_text().split("### Behind a reverse proxy", 1)[1]
    match = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert match, "docs/server.md has no nginx block under 'Behind a reverse proxy'"
    return match.group(1)


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"the documented block no longer has {old!r}"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    assert OPENSSL is not None
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def nginx_front(upstream: str, folder: Path) -> Iterator[tuple[str, Path, Path]]:
    """nginx running the documented block: (its https root URL, certificate, access log)."""
    cert, key = self_signed(folder)
    port = free_port()
    block = documented_block()
    block = replaced(block, "server 127.0.0.1:8787;", f"server {upstream};")
    block = replaced(block, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    block = replaced(
        block,
        "# ssl_certificate ...; ssl_certificate_key ...;",
        f"ssl_certificate {cert}; ssl_certificate_key {key};",
    )
    access = folder / "access.log"
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = folder / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {access};\n{temp}\n{block}}}\n"
    )
    assert NGINX is not None
    proc = subprocess.Popen(
        [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError("nginx exited:\n" + (folder / "error.log").read_text())
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        assert wait_until(listening, 30), (folder / "error.log").read_text()
        yield f"https://127.0.0.1:{port}", cert, access
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_an_agent_behind_the_documented_nginx_block_takes_an_update(
    server: Any, tmp_path: Path
) -> None:
    pyz, _old = install_zipapp(tmp_path)
    setup_fleet(server, {}, [])
    front_dir = tmp_path / "nginx"
    front_dir.mkdir()
    upstream = urlsplit(server.root_url).netloc
    with nginx_front(upstream, front_dir) as (front, cert, access):
        env = agent_env(
            server,
            tmp_path,
            DM_HEARTBEAT_SECONDS="1",
            FCS_API_BASE_URL=f"{front}/api",
            SSL_CERT_FILE=str(cert),
            DM_ALLOWED_DOMAINS="127.0.0.1",
        )
        with AgentProcess(env, bundle=pyz) as agent:
            agent.wait_for_line("Registered dependency agent")
            assert agent_version(server) == p.AGENT_VERSION
            new = pyz_with(NEW)
            publish(server, tmp_path, new)
            # The offered link leads back through the proxy, over HTTPS, to the build.
            line = agent.wait_for_line(r"offered: downloading (\S+)")
            assert line.group(1).startswith(f"{front}/agent/builds/{sha256_hex(new)}")
            assert wait_until(lambda: agent_version(server) == NEW, 60), agent.log()
            agent.wait_for_line("confirmed: registered")
            assert pyz.read_bytes() == new
            assert agent.stop() == 0
        assert f"GET /agent/builds/{sha256_hex(new)}.pyz" in access.read_text()
