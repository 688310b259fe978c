"""Hugging Face: `hf://ORG/REPO/PATH[@REVISION]` -> a file at a pinned commit.

The revision (a branch, tag or commit; default `main`) is first pinned to its
commit (`GET /api/models/{repo}/revision/{rev}` answers `sha`), then the file's
LFS pointer is read at that commit (`POST /api/models/{repo}/paths-info/{sha}`
answers `lfs.oid`, the sha256, and `lfs.size`). The download URL names the
commit, so a later push to `main` never changes what nodes fetch. A path ending
in `/` is a folder: its files are listed (`GET .../tree/{sha}/{path}?recursive=1`).
Small files kept in git rather than LFS (a diffusers `model_index.json`) have
only a git blob id; they are fetched once and hashed here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from depman.errors import SourceUnavailable, ValidationFailed
from depman.sources.answers import HfEntry, HfRevision, parse_answer

# Hub repo ids: an owner and a name of letters, digits, '-', '_' and '.'.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Files outside LFS are small by construction (the Hub refuses large ones there).
MAX_GIT_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class HfSource:
    """A parsed `hf://` URL."""

    repo: str
    path: str
    revision: str

    @property
    def is_folder(self) -> bool:
        """`hf://org/repo/dir/` (or the whole repo) names a folder."""
        return self.path == "" or self.path.endswith("/")


@dataclass(frozen=True)
class HfFile:
    """One resolved file."""

    path: str
    url: str
    sha256: str
    size_bytes: int


def parse(url: str) -> HfSource:
    """`hf://ORG/REPO/PATH[@REVISION]`; ValidationFailed naming the expected form."""
    rest = url[len("hf://") :]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1] or not revision:
        raise ValidationFailed(f"not an hf:// source: {url!r} (use hf://ORG/REPO/PATH[@REVISION])")
    path = "/".join(parts[2:])
    if not (NAME_RE.match(parts[0]) and NAME_RE.match(parts[1]) and REVISION_RE.match(revision)):
        raise ValidationFailed(f"not an hf:// source: {url!r} (use hf://ORG/REPO/PATH[@REVISION])")
    if any(p in (".", "..") for p in path.split("/")) or CONTROL_RE.search(path):
        raise ValidationFailed(f"hf:// path must not contain '.' or '..': {url!r}")
    return HfSource(repo=f"{parts[0]}/{parts[1]}", path=path, revision=revision)


class HfClient:
    """The few Hub API calls resolution needs."""

    def __init__(self, http: httpx.Client, endpoint: str, token: str | None) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _get(self, path: str, what: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(
                kw.pop("method", "GET"), self.endpoint + path, headers=self.headers, **kw
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise SourceUnavailable(
                f"the depman server could not reach Hugging Face at {self.endpoint} for "
                f"{what}: {exc} (the server, not the CLI, resolves hf:// sources: let it reach "
                "that host, or point DEPMAN_HF_ENDPOINT on the server at a mirror)"
            ) from exc
        if response.status_code in (401, 403):
            raise ValidationFailed(
                f"Hugging Face refused {what} ({response.status_code}): a gated or private "
                "repo needs DEPMAN_HF_TOKEN on the server"
            )
        if response.status_code == 404:
            code = response.headers.get("X-Error-Code", "not found")
            raise ValidationFailed(f"Hugging Face has no {what} ({code})")
        if response.status_code >= 400:
            raise SourceUnavailable(f"Hugging Face answered {response.status_code} for {what}")
        return response

    def commit_of(self, source: HfSource) -> str:
        """The commit the revision points at now."""
        what = f"revision {source.revision!r} of {source.repo}"
        body = self._json(
            self._get(
                f"/api/models/{source.repo}/revision/{quote(source.revision, safe='')}", what
            ),
            what,
        )
        revision: HfRevision = parse_answer(HfRevision, body, who="Hugging Face", what=what)
        return revision.sha

    def paths_info(self, repo: str, commit: str, paths: list[str]) -> list[HfEntry]:
        """The entries of `paths` at `commit` (missing ones are left out)."""
        what = f"files of {repo}@{commit[:12]}"
        body = self._json(
            self._get(
                f"/api/models/{repo}/paths-info/{commit}",
                what,
                method="POST",
                data={"paths": paths, "expand": "false"},
            ),
            what,
        )
        entries: list[HfEntry] = parse_answer(list[HfEntry], body, who="Hugging Face", what=what)
        return entries

    def tree(self, repo: str, commit: str, folder: str) -> list[HfEntry]:
        """Every file under `folder` at `commit`."""
        what = f"folder {folder or '/'} of {repo}@{commit[:12]}"
        path = f"/api/models/{repo}/tree/{commit}"
        if folder:
            path += "/" + quote(folder.rstrip("/"))
        body = self._json(self._get(path, what, params={"recursive": "true"}), what)
        entries: list[HfEntry] = parse_answer(list[HfEntry], body, who="Hugging Face", what=what)
        return [e for e in entries if e.type == "file"]

    def download_url(self, repo: str, commit: str, path: str) -> str:
        """What the nodes fetch: the file at the pinned commit."""
        return f"{self.endpoint}/{repo}/resolve/{commit}/{quote(path)}"

    def hash_small_file(self, url: str, size: int, what: str) -> str:
        """sha256 of a file kept in git (no LFS oid), read once."""
        if size > MAX_GIT_FILE_BYTES:
            raise ValidationFailed(f"{what} is not in LFS and too large to hash here")
        digest = hashlib.sha256()
        try:
            with self.http.stream(
                "GET", url, headers=self.headers, follow_redirects=True
            ) as response:
                if response.status_code >= 400:
                    raise SourceUnavailable(
                        f"Hugging Face answered {response.status_code} for {what}"
                    )
                for chunk in response.iter_bytes():
                    digest.update(chunk)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(
                f"the depman server could not reach Hugging Face at {self.endpoint} for "
                f"{what}: {exc} (the server, not the CLI, resolves hf:// sources: let it reach "
                "that host, or point DEPMAN_HF_ENDPOINT on the server at a mirror)"
            ) from exc
        return digest.hexdigest()

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise SourceUnavailable(f"Hugging Face answered no JSON for {what}") from exc

    def file_of(self, repo: str, commit: str, entry: HfEntry) -> HfFile:
        """A resolved file from a paths-info / tree entry."""
        path = entry.path
        url = self.download_url(repo, commit, path)
        if entry.lfs is not None:
            sha = entry.lfs.oid.removeprefix("sha256:")
            size = entry.lfs.size if entry.lfs.size is not None else entry.size
        else:
            size = entry.size
            if size is None:
                raise SourceUnavailable(f"Hugging Face gave no size for {repo}/{path}")
            sha = self.hash_small_file(url, size, f"{repo}/{path}")
        if size is None:
            raise SourceUnavailable(f"Hugging Face gave no size for {repo}/{path}")
        return HfFile(path=path, url=url, sha256=sha.lower(), size_bytes=size)


def resolve_file(client: HfClient, source: HfSource) -> tuple[HfFile, str]:
    """(the file, the pinned commit)."""
    commit = client.commit_of(source)
    entries = [
        e for e in client.paths_info(source.repo, commit, [source.path]) if e.path == source.path
    ]
    if not entries:
        raise ValidationFailed(
            f"Hugging Face has no file {source.path!r} in {source.repo} at {source.revision}"
        )
    if entries[0].type == "directory":
        raise ValidationFailed(
            f"hf://{source.repo}/{source.path} is a folder: end it with '/' for a folder model"
        )
    return client.file_of(source.repo, commit, entries[0]), commit


def resolve_folder(
    client: HfClient, source: HfSource, *, max_files: int | None = None
) -> tuple[list[HfFile], str]:
    """(every file under the folder, with paths relative to it; the pinned commit).

    A folder of more than `max_files` files is refused from its listing, before the
    per-file requests (files kept in git are fetched to be hashed).
    """
    commit = client.commit_of(source)
    prefix = source.path
    entries = client.tree(source.repo, commit, prefix)
    if not entries:
        raise ValidationFailed(
            f"Hugging Face has no files under {prefix or '/'} in {source.repo} at {source.revision}"
        )
    if max_files is not None and len(entries) > max_files:
        raise ValidationFailed(
            f"hf://{source.repo}/{prefix} holds {len(entries)} files; a folder model may list "
            f"at most {max_files}"
        )
    files = []
    for entry in entries:
        resolved = client.file_of(source.repo, commit, entry)
        files.append(
            HfFile(
                path=resolved.path[len(prefix) :],
                url=resolved.url,
                sha256=resolved.sha256,
                size_bytes=resolved.size_bytes,
            )
        )
    return files, commit
