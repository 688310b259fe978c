"""Loopback fakes of the Hugging Face Hub and Civitai APIs, answering their real JSON shapes.

Hugging Face: `GET /api/models/{repo}/revision/{rev}` → `{"id", "sha"}`;
`POST /api/models/{repo}/paths-info/{commit}` (form `paths=`) → `[{type, path, oid,
size, lfs?: {oid, size, pointerSize}}]` with missing paths left out;
`GET /api/models/{repo}/tree/{commit}/{dir}?recursive=true` → the same entries;
`GET /{repo}/resolve/{commit}/{path}` → the bytes. 404s carry `X-Error-Code`
(RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub does.

Civitai: `GET /api/v1/model-versions/{id}` → `{id, modelId, name, model: {name, type},
files: [{id, name, type, primary, sizeKB, hashes: {SHA256, AutoV2}, downloadUrl}]}`,
404 `{"error": "No model with id ..."}`; `GET /api/download/models/{id}` redirects to
the file's bytes on `/storage/...`, as Civitai redirects to its storage host.

With `auto=True` the Hub serves any file of any repo (bytes derived from the path),
so a fleet or workflow naming real repos resolves without the network.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_MIN_BYTES = 64  # files from this size are "LFS" (have a sha256 oid); smaller ones are git


def content_of(path: str, size: int = 200) -> bytes:
    """Deterministic bytes for an auto-served file."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Repo:
    """A model repo: commits (oldest first) of {path: bytes} and branch/tag refs."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def push(self, files: dict[str, bytes], ref: str = "main") -> str:
        """A new commit on `ref` holding `files` on top of the ref's tree."""
        base = dict(self.commits.get(self.refs.get(ref, ""), {}))
        base.update(files)
        commit = hashlib.sha1(
            json.dumps(sorted(base), default=str).encode() + str(len(self.commits)).encode()
        ).hexdigest()
        self.commits[commit] = base
        self.refs[ref] = commit
        return commit


@dataclass
class CivitaiVersion:
    """A model version with its files: (name, bytes, type, primary)."""

    model_type: str
    files: list[tuple[str, bytes, str, bool]]
    # Host name the download redirects to (Civitai's storage is another host), else this one.
    storage_host: str | None = None


class FakeHubs:
    """One HTTP server playing both APIs (tests point both endpoints at it)."""

    def __init__(self, *, auto: bool = False) -> None:
        self.auto = auto
        self.repos: dict[str, Repo] = {}
        self.versions: dict[str, CivitaiVersion] = {}
        self.requests: list[str] = []
        self.authorizations: list[tuple[str, str | None]] = []  # (path, Authorization)
        # Path -> JSON text answered (200) instead of the real shape: a broken upstream.
        self.raw_answers: dict[str, bytes] = {}
        self.lock = threading.Lock()
        # A slow Hub: API requests wait up to `hold_seconds` for `release` (set `arrived`).
        self.hold_seconds = 0.0
        self.arrived = threading.Event()
        self.release = threading.Event()
        hubs = self

        class Handler(_Handler):
            pass

        Handler.hubs = hubs
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHubs:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        """Base URL of both APIs."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def repo(self, name: str) -> Repo:
        """The repo `org/name`, created empty."""
        return self.repos.setdefault(name, Repo())

    def files_at(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, tree) for a revision, or None."""
        found = self.repos.get(repo)
        if found is None:
            if not self.auto:
                return None
            return ("a" * 40, {})
        commit = found.refs.get(rev, rev)
        tree = found.commits.get(commit)
        return (commit, tree) if tree is not None else None

    def file(self, repo: str, commit: str, path: str) -> bytes | None:
        """One file's bytes at a commit."""
        found = self.repos.get(repo)
        if found is None:
            if not self.auto:
                return None
            data = content_of(f"{repo}/{path}")
            return data[:40] if path.endswith(".json") else data
        return found.commits.get(commit, {}).get(path)


def entry(path: str, data: bytes) -> dict[str, Any]:
    """A paths-info / tree entry as the Hub answers it."""
    doc: dict[str, Any] = {
        "type": "file",
        "path": path,
        "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        "size": len(data) if len(data) < LFS_MIN_BYTES else 134,
    }
    if len(data) >= LFS_MIN_BYTES:
        doc["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return doc


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hubs: FakeHubs

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hold(self) -> None:
        if self.hubs.hold_seconds:
            self.hubs.arrived.set()
            self.hubs.release.wait(self.hubs.hold_seconds)

    def _raw(self, path: str) -> bool:
        raw = self.hubs.raw_answers.get(path)
        if raw is not None:
            self._send(200, raw, {"Content-Type": "application/json"})
        return raw is not None

    def _not_found(self, code: str) -> None:
        self._send(404, {"error": code}, {"X-Error-Code": code})

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with self.hubs.lock:
            self.hubs.requests.append(f"GET {path}")
            self.hubs.authorizations.append((path, self.headers.get("Authorization")))
        if self._raw(path):
            return None
        segs = path.strip("/").split("/")
        if path.startswith("/api/"):
            self._hold()
        if path.startswith("/api/v1/model-versions/"):
            return self._civitai_version(segs[-1])
        if path.startswith("/api/download/models/"):
            return self._civitai_download(segs[-1], parse_qs(parts.query))
        if path.startswith("/storage/"):
            return self._civitai_storage(segs[1], segs[2])
        if path.startswith("/api/models/"):
            repo = "/".join(segs[2:4])
            if segs[4] == "revision":
                found = self.hubs.files_at(repo, "/".join(segs[5:]))
                if found is None:
                    code = "RepoNotFound" if repo not in self.hubs.repos else "RevisionNotFound"
                    return self._not_found(code)
                return self._send(200, {"id": repo, "sha": found[0]})
            if segs[4] == "tree":
                return self._tree(repo, segs[5], "/".join(segs[6:]))
        if len(segs) >= 5 and segs[2] == "resolve":
            data = self.hubs.file("/".join(segs[:2]), segs[3], "/".join(segs[4:]))
            if data is None:
                return self._not_found("EntryNotFound")
            return self._send(200, data, {"Content-Type": "application/octet-stream"})
        self._not_found("NotFound")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with self.hubs.lock:
            self.hubs.requests.append(f"POST {path}")
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        if self._raw(path):
            return None
        self._hold()
        segs = path.strip("/").split("/")
        if not (path.startswith("/api/models/") and segs[4] == "paths-info"):
            return self._not_found("NotFound")
        repo, commit = "/".join(segs[2:4]), segs[5]
        found = self.hubs.files_at(repo, commit)
        if found is None:
            return self._not_found("RevisionNotFound")
        out = []
        for wanted in form.get("paths", []):
            data = self.hubs.file(repo, commit, wanted)
            if data is not None:
                out.append(entry(wanted, data))
            elif any(p.startswith(wanted.rstrip("/") + "/") for p in found[1]):
                out.append({"type": "directory", "path": wanted, "oid": "0" * 40, "size": 0})
        self._send(200, out)

    def _tree(self, repo: str, commit: str, folder: str) -> None:
        found = self.hubs.files_at(repo, commit)
        if found is None:
            return self._not_found("RevisionNotFound")
        prefix = folder.rstrip("/") + "/" if folder else ""
        tree = found[1]
        if repo not in self.hubs.repos:  # auto: a small diffusers-like folder
            names = [f"{prefix}model_index.json", f"{prefix}unet/model.safetensors"]
            tree = {n: self.hubs.file(repo, commit, n) or b"" for n in names}
        files = [entry(p, d) for p, d in sorted(tree.items()) if p.startswith(prefix)]
        if not files:
            return self._not_found("EntryNotFound")
        self._send(200, files)

    def _civitai_version(self, version: str) -> None:
        found = self.hubs.versions.get(version)
        if found is None and self.hubs.auto and version.isdigit():
            data = content_of(f"civitai/{version}")
            found = CivitaiVersion("LORA", [(f"model-{version}.safetensors", data, "Model", True)])
        if found is None:
            return self._send(404, {"error": f"No model with id {version}"})
        base = f"http://{self.headers.get('Host')}"
        files = [
            {
                "id": i + 1,
                "name": name,
                "type": kind,
                "primary": primary,
                "sizeKB": len(data) / 1024,
                "hashes": {
                    "SHA256": hashlib.sha256(data).hexdigest().upper(),
                    "AutoV2": hashlib.sha256(data).hexdigest()[:10].upper(),
                },
                "downloadUrl": f"{base}/api/download/models/{version}?type={quote(kind)}&file={i}",
                "metadata": {"format": "SafeTensor"},
            }
            for i, (name, data, kind, primary) in enumerate(found.files)
        ]
        self._send(
            200,
            {
                "id": int(version),
                "modelId": 1,
                "name": "v1",
                "model": {"name": "m", "type": found.model_type},
                "files": files,
                "downloadUrl": f"{base}/api/download/models/{version}",
            },
        )

    def _civitai_download(self, version: str, query: dict[str, list[str]]) -> None:
        index = query.get("file", ["0"])[0]
        found = self.hubs.versions.get(version)
        location = f"/storage/{version}/{index}"
        if found is not None and found.storage_host:
            location = f"http://{found.storage_host}:{self.server.server_address[1]}{location}"
        self._send(307, b"", {"Location": location})

    def _civitai_storage(self, version: str, index: str) -> None:
        found = self.hubs.versions.get(version)
        if found is None and self.hubs.auto and version.isdigit():
            found = CivitaiVersion("LORA", [("m", content_of(f"civitai/{version}"), "Model", True)])
        if found is None or not index.isdigit() or int(index) >= len(found.files):
            return self._send(404, b"")
        self._send(200, found.files[int(index)][1], {"Content-Type": "application/octet-stream"})
