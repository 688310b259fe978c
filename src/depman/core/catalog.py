"""The dependency catalog: validated entries, one row per model file."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from depman.core import model_types
from depman.core.chunks import chunks
from depman.core.clock import utcnow
from depman.core.states import ACTIVE_JOB_STATES, ItemState, JobState
from depman.errors import Conflict, NotFound, ValidationFailed
from depman.store.models import Dep, Job, JobDep, ProfileStaticDep, QueueItem

AUTH_KINDS = ("none", "hf_token", "civitai_token")
DEP_KINDS = ("static", "dynamic")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Ids travel in URL paths and in `<depId>.<gen>` item ids: no slashes, spaces or controls.
ID_RE = re.compile(r"^[^/\\\s\x00-\x1f\x7f-\x9f]{1,200}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Where a catalog entry may write, relative to the ComfyUI folder: model files only,
# unless the server runs with DEPMAN_ALLOW_ANY_DESTINATION (docs/server.md).
MODEL_ROOTS = ("models/",)


# Model roots are names of `extra_model_paths.yaml` sections on the nodes.
ROOT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
SOURCE_SCHEMES = ("hf", "civitai")
MAX_FOLDER_FILES = 1000


@dataclass(frozen=True)
class FileSpec:
    """One file of a folder model: its path inside the folder and where it comes from."""

    path: str
    url: str
    sha256: str | None = None
    size_bytes: int | None = None
    source: str | None = None
    revision: str | None = None

    def document(self) -> dict[str, Any]:
        """As the API and the agent see it."""
        doc: dict[str, Any] = {"path": self.path, "url": self.url}
        if self.sha256:
            doc["sha256"] = self.sha256
        if self.size_bytes is not None:
            doc["sizeBytes"] = self.size_bytes
        if self.source:
            doc["source"] = self.source
        if self.revision:
            doc["revision"] = self.revision
        return doc


@dataclass(frozen=True)
class DepSpec:
    """What a catalog entry says about a model (validated by `validate_dep`).

    Either `dest_relative_path` (v1) or `model_type` + `filename`, from which the
    path is derived. `files` makes it a folder model. `url` (or a file's url) may
    be an `hf://` or `civitai://` source until `put_dep` has it resolved.
    """

    url: str
    dest_relative_path: str | None = None
    kind: str = "dynamic"
    auth: str = "none"
    sha256: str | None = None
    expected_size_bytes: int | None = None
    model_type: str | None = None
    filename: str | None = None
    root: str | None = None
    source: str | None = None
    revision: str | None = None
    files: tuple[FileSpec, ...] | None = None


# Resolves hf:// and civitai:// sources of a spec into download URLs, hashes and sizes.
SourceResolver = Callable[[DepSpec], DepSpec]


def is_source_url(url: str | None) -> bool:
    """An `hf://` or `civitai://` URL, which the server resolves when an entry is put."""
    return bool(url) and urlsplit(url or "").scheme in SOURCE_SCHEMES


def needs_resolving(spec: DepSpec) -> bool:
    """Whether the spec still names a source the server must resolve."""
    return is_source_url(spec.url) or any(is_source_url(f.url) for f in spec.files or ())


def validate_id(value: str, what: str) -> str:
    """Check an object id: 1-200 chars, no slash, whitespace or control character."""
    if not ID_RE.match(value or ""):
        raise ValidationFailed(
            f"{what} must be 1-200 characters without '/', '\\', whitespace or control characters"
        )
    return value


def validate_dest_path(path: str, *, allow_any_destination: bool = False) -> str:
    """A path relative to the ComfyUI folder that cannot leave it, under a model root
    unless `allow_any_destination` (the one place the destination rule lives)."""
    if not path:
        raise ValidationFailed("destRelativePath must be a non-empty relative path")
    if CONTROL_RE.search(path):
        raise ValidationFailed("destRelativePath must not contain control characters")
    if "\\" in path:
        raise ValidationFailed("destRelativePath must use '/' separators")
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        raise ValidationFailed("destRelativePath must be relative to the ComfyUI folder")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValidationFailed(
            "destRelativePath must stay inside the ComfyUI folder (no '..', '.' or empty parts)"
        )
    if not allow_any_destination and not (path.startswith(MODEL_ROOTS) and len(parts) > 1):
        roots = ", ".join(MODEL_ROOTS)
        raise ValidationFailed(
            f"destRelativePath must be a file under {roots} (the server refuses other "
            "destinations unless started with DEPMAN_ALLOW_ANY_DESTINATION=1)"
        )
    return path


def _check_http_url(url: str, what: str) -> None:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"{what} must be an http(s) URL with a host")


def _check_sha(sha: str | None, what: str = "sha256") -> str | None:
    if sha is None:
        return None
    if not SHA256_RE.match(sha):
        raise ValidationFailed(f"{what} must be 64 hexadecimal characters")
    return sha.lower()


def _check_size(size: int | None, what: str = "expectedSizeBytes") -> int | None:
    if size is not None and (isinstance(size, bool) or size <= 0):
        raise ValidationFailed(f"{what} must be a positive integer")
    return size


def _check_filename(name: str, what: str) -> str:
    if CONTROL_RE.search(name or ""):
        raise ValidationFailed(f"{what} must not contain control characters")
    name = (name or "").replace("\\", "/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValidationFailed(f"{what} must be a relative file name (subfolders allowed, no '..')")
    return name


def _files(spec: DepSpec) -> tuple[FileSpec, ...] | None:
    if spec.files is None:
        return None
    if not spec.files:
        raise ValidationFailed("files must list at least one file of the folder model")
    if len(spec.files) > MAX_FOLDER_FILES:
        raise ValidationFailed(f"files lists more than {MAX_FOLDER_FILES} files")
    seen: set[str] = set()
    out = []
    for i, f in enumerate(spec.files):
        path = _check_filename(f.path, f"files[{i}].path")
        if path in seen:
            raise ValidationFailed(f"files[{i}].path {path!r} is listed twice")
        seen.add(path)
        _check_http_url(f.url, f"files[{i}].url")
        out.append(
            replace(
                f,
                path=path,
                sha256=_check_sha(f.sha256, f"files[{i}].sha256"),
                size_bytes=_check_size(f.size_bytes, f"files[{i}].sizeBytes"),
            )
        )
    return tuple(out)


def _destination(
    spec: DepSpec, allow_any_destination: bool
) -> tuple[str, str | None, str | None]:
    """(destRelativePath, type, filename): derived from type + filename, or checked."""
    model_type: str | None
    filename: str | None
    if spec.model_type is not None:
        model_type = model_types.canonical_type(spec.model_type)
        if spec.filename is None:
            raise ValidationFailed("filename is required with type")
        filename = _check_filename(spec.filename, "filename")
        dest = model_types.dest_for(model_type, filename)
        given = spec.dest_relative_path
        if given and given != dest and model_types.split_models_path(given) != (
            model_type,
            filename,
        ):
            raise ValidationFailed(
                f"destRelativePath {given!r} disagrees with type {model_type!r} and "
                f"filename {filename!r} (which give {dest!r}); give one or the other"
            )
        dest = given or dest
    elif spec.dest_relative_path:
        dest = spec.dest_relative_path
        if spec.filename is not None:
            raise ValidationFailed("filename needs type (or give destRelativePath alone)")
        derived = model_types.split_models_path(dest)
        model_type, filename = derived if derived else (None, None)
    else:
        raise ValidationFailed("give type and filename, or destRelativePath")
    validate_dest_path(dest, allow_any_destination=allow_any_destination)
    if not allow_any_destination:  # the opt-in also admits custom nodes' own folders
        model_types.check_models_path(dest)
    return dest, model_type, filename


def validate_dep(spec: DepSpec, *, allow_any_destination: bool = False) -> DepSpec:
    """Check a resolved catalog entry; answer it normalised (path derived, sha256 lower case).

    The one place every destination rule lives: the admin API, `depman apply`
    and workflow imports all put entries through here.
    """
    if needs_resolving(spec):
        raise ValidationFailed("hf:// and civitai:// sources must be resolved before validation")
    files = _files(spec)
    if files is None or spec.url:
        _check_http_url(spec.url, "url")
    if spec.auth not in AUTH_KINDS:
        raise ValidationFailed(f"auth must be one of {', '.join(AUTH_KINDS)}")
    if spec.kind not in DEP_KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(DEP_KINDS)}")
    dest, model_type, filename = _destination(spec, allow_any_destination)
    if files is None and model_type in model_types.FOLDER_TYPES:
        raise ValidationFailed(f"type {model_type!r} is a folder model: list its files")
    if spec.root is not None and not ROOT_RE.match(spec.root):
        raise ValidationFailed(
            "root must name a section of extra_model_paths.yaml (letters, digits, '_', '-', '.')"
        )
    sha = _check_sha(spec.sha256)
    size = _check_size(spec.expected_size_bytes)
    if files is not None:
        if sha is not None:
            raise ValidationFailed("a folder model has a sha256 per file, not one for the folder")
        sizes = [f.size_bytes for f in files]
        total = sum(s for s in sizes if s is not None)
        if size is None and None not in sizes:
            size = total
    return replace(
        spec,
        dest_relative_path=dest,
        model_type=model_type,
        filename=filename,
        sha256=sha,
        expected_size_bytes=size,
        files=files,
    )


def put_dep(
    dep_id: str,
    spec: DepSpec,
    *,
    session: Session,
    resolve: SourceResolver | None = None,
    allow_any_destination: bool = False,
) -> Dep:
    """Create or replace a catalog entry, resolving its hf:// / civitai:// sources first.

    An entry whose source is unchanged keeps its stored resolution (pinned
    revision, hash, size): putting the same document again asks no API and moves
    nothing.
    """
    validate_id(dep_id, "depId")
    dep = session.get(Dep, dep_id)
    if needs_resolving(spec):
        spec = _reuse_resolution(spec, dep) or _resolve(spec, resolve)
    spec = validate_dep(spec, allow_any_destination=allow_any_destination)
    now = utcnow()
    if dep is None:
        dep = Dep(dep_id=dep_id, created_at=now)
        session.add(dep)
    dep.url = spec.url
    dep.auth = spec.auth
    dep.dest_relative_path = spec.dest_relative_path or ""
    dep.sha256 = spec.sha256
    dep.expected_size_bytes = spec.expected_size_bytes
    dep.kind = spec.kind
    dep.model_type = spec.model_type
    dep.filename = spec.filename
    dep.root = spec.root
    dep.source = spec.source
    dep.revision = spec.revision
    dep.files = [f.document() for f in spec.files] if spec.files is not None else None
    dep.updated_at = now
    session.flush()
    return dep


def _resolve(spec: DepSpec, resolve: SourceResolver | None) -> DepSpec:
    if resolve is None:
        raise ValidationFailed("this server cannot resolve hf:// or civitai:// sources here")
    return resolve(spec)


def _reuse_resolution(spec: DepSpec, dep: Dep | None) -> DepSpec | None:
    """The stored resolution when the entry names the same sources as before."""
    if dep is None or (dep.source is None and not dep.files):
        return None
    if spec.files is None:
        if spec.url != dep.source:
            return None
        if dep.files is not None:  # an hf:// folder: the files it was resolved into
            kept = spec_of(dep)
            return replace(
                spec,
                url=dep.url,
                source=dep.source,
                revision=dep.revision,
                filename=spec.filename or dep.filename,
                files=kept.files,
            )
        if spec.dest_relative_path is None:
            # The source filled in the file name (hf://, civitai://) and the type (civitai://).
            spec = replace(
                spec,
                model_type=spec.model_type or dep.model_type,
                filename=spec.filename or dep.filename,
            )
        return replace(
            spec,
            url=dep.url,
            source=dep.source,
            revision=dep.revision,
            sha256=spec.sha256 or dep.sha256,
            expected_size_bytes=spec.expected_size_bytes or dep.expected_size_bytes,
        )
    stored = {f.get("path"): f for f in dep.files or []}
    files = []
    for f in spec.files:
        old = stored.get(f.path)
        if not is_source_url(f.url):
            files.append(f)
        elif old is not None and old.get("source") == f.url:
            files.append(
                replace(
                    f,
                    url=old["url"],
                    source=f.url,
                    revision=old.get("revision"),
                    sha256=f.sha256 or old.get("sha256"),
                    size_bytes=f.size_bytes or old.get("sizeBytes"),
                )
            )
        else:
            return None
    if is_source_url(spec.url):
        if spec.url != dep.source:
            return None
        spec = replace(spec, url=dep.url, source=dep.source, revision=dep.revision)
    return replace(spec, files=tuple(files))


def spec_of(dep: Dep) -> DepSpec:
    """The spec a stored entry was put with (resolved)."""
    files = None
    if dep.files is not None:
        files = tuple(
            FileSpec(
                path=f["path"],
                url=f["url"],
                sha256=f.get("sha256"),
                size_bytes=f.get("sizeBytes"),
                source=f.get("source"),
                revision=f.get("revision"),
            )
            for f in dep.files
        )
    return DepSpec(
        url=dep.url,
        dest_relative_path=dep.dest_relative_path,
        kind=dep.kind,
        auth=dep.auth,
        sha256=dep.sha256,
        expected_size_bytes=dep.expected_size_bytes,
        model_type=dep.model_type,
        filename=dep.filename,
        root=dep.root,
        source=dep.source,
        revision=dep.revision,
        files=files,
    )


def get_dep(dep_id: str, *, session: Session) -> Dep:
    """One catalog entry, or NotFound."""
    dep = session.get(Dep, dep_id)
    if dep is None:
        raise NotFound(f"dep {dep_id!r} does not exist")
    return dep


def list_deps(*, session: Session) -> list[Dep]:
    """Every catalog entry, by id."""
    return list(session.scalars(select(Dep).order_by(Dep.dep_id)))


def missing_dep_ids(dep_ids: list[str], *, session: Session) -> list[str]:
    """Those of `dep_ids` that are not in the catalog."""
    if not dep_ids:
        return []
    known: set[str] = set()
    for part in chunks(dep_ids):
        known.update(session.scalars(select(Dep.dep_id).where(Dep.dep_id.in_(part))))
    return [dep_id for dep_id in dep_ids if dep_id not in known]


def delete_dep(dep_id: str, *, session: Session) -> None:
    """Remove a catalog entry no profile or job needs; drop its queued items."""
    dep = get_dep(dep_id, session=session)
    profile = session.scalar(
        select(ProfileStaticDep.profile_id).where(ProfileStaticDep.dep_id == dep_id).limit(1)
    )
    if profile is not None:
        raise Conflict(f"dep {dep_id!r} is a static dep of profile {profile!r}")
    active = session.scalar(
        select(JobDep.job_id)
        .join(Job, Job.job_id == JobDep.job_id)
        .where(JobDep.dep_id == dep_id)
        .where(Job.state.in_((*ACTIVE_JOB_STATES, JobState.PENDING.value)))
        .limit(1)
    )
    if active is not None:
        raise Conflict(f"dep {dep_id!r} is needed by job {active!r}")
    session.execute(
        delete(QueueItem)
        .where(QueueItem.dep_id == dep_id)
        .where(QueueItem.state == ItemState.QUEUED.value)
    )
    session.delete(dep)
    session.flush()
