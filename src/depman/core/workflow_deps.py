"""A workflow's models against the catalog: which deps it needs, which files are unknown.

Used by `POST /api/admin/workflows/deps` (`depman workflow deps`), by the import
of unknown models (`depman workflow import`) and by jobs submitted with a
workflow: one matching rule for all three. Each takes the references
`workflows.workflow_models` parsed, so callers parse before they open a session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core import catalog, model_types
from depman.core.workflows import ModelRef
from depman.errors import DepmanError, ValidationFailed
from depman.store.models import Dep

# huggingface.co/<org>/<repo>/resolve/<revision>/<path>: the link ComfyUI templates carry.
HF_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")
HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_DOWNLOAD_RE = re.compile(r"^/api/download/models/(?P<id>\d+)$")


@dataclass
class ModelMatch:
    """One model file of the workflow and the catalog deps that provide it."""

    ref: ModelRef
    dep_ids: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """As the API answers it."""
        return {
            "type": self.ref.model_type,
            "filename": self.ref.filename,
            "url": self.ref.url,
            "nodeTypes": self.ref.node_types,
            "depIds": self.dep_ids,
        }


def _catalog_keys(session: Session) -> dict[tuple[str | None, str], list[str]]:
    """(type, filename) -> dep ids, typing v1 entries by their models/<folder>/ path."""
    keys: dict[tuple[str | None, str], list[str]] = {}
    rows = session.execute(
        select(Dep.dep_id, Dep.model_type, Dep.filename, Dep.dest_relative_path).order_by(
            Dep.dep_id
        )
    )
    for dep_id, model_type, filename, dest in rows:
        if model_type is None or filename is None:
            derived = model_types.split_models_path(dest or "")
            if derived is None:
                continue
            model_type, filename = derived
        keys.setdefault((model_type, filename), []).append(dep_id)
        keys.setdefault((None, filename), []).append(dep_id)
    return keys


def match_workflow(refs: list[ModelRef], *, session: Session) -> list[ModelMatch]:
    """Every model the workflow references, each with the deps that provide it."""
    keys = _catalog_keys(session)
    return [ModelMatch(ref, list(keys.get(ref.key, []))) for ref in refs]


def workflow_dep_ids(refs: list[ModelRef], *, session: Session) -> list[str]:
    """The deps a job running this workflow needs; ValidationFailed naming unknown files."""
    matches = match_workflow(refs, session=session)
    unknown = [m.ref for m in matches if not m.dep_ids]
    if unknown:
        names = ", ".join(f"{r.model_type or '?'}/{r.filename}" for r in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValidationFailed(
            f"the workflow needs models the catalog does not have: {names}{more} "
            "(add them, or `depman workflow import` the workflow)"
        )
    return list(dict.fromkeys(m.dep_ids[0] for m in matches))


def source_of_url(url: str) -> str:
    """The hf:// / civitai:// source behind a Hugging Face or Civitai download link, so its
    hash and size can be resolved; other URLs as they are."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in HF_HOSTS or host.endswith(".huggingface.co"):
        found = HF_RESOLVE_RE.match(parts.path)
        if found:
            path, rev = unquote(found["path"]), unquote(found["rev"])
            return f"hf://{found['repo']}/{path}@{rev}"
    if host == "civitai.com" or host.endswith(".civitai.com"):
        found = CIVITAI_DOWNLOAD_RE.match(parts.path)
        if found:
            return f"civitai://{found['id']}"
    return url


def dep_id_for(ref: ModelRef, taken: set[str]) -> str:
    """A readable catalog id for an imported file: its name, made unique.

    The suffix search is linear in the files sharing a name; the workflow's bound on
    model files keeps it small.
    """
    stem = ref.filename.rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".gguf", ".sft"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:180] or "model"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


@dataclass
class ImportResult:
    """What `import_workflow` did for each unknown model."""

    created: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ImportPlan:
    """What `plan_import` found: the result so far and the entries to add, unresolved."""

    result: ImportResult
    entries: list[tuple[dict[str, Any], str, catalog.DepSpec]] = field(default_factory=list)


def import_workflow(
    refs: list[ModelRef],
    *,
    read: Callable[[], AbstractContextManager[Session]],
    write: Session,
    kind: str = "dynamic",
    auth: str = "none",
    resolve: catalog.SourceResolver | None = None,
) -> ImportResult:
    """Add a catalog entry for each unknown model of the workflow that carries a url.

    Three steps, so no network call runs inside the write transaction: match the
    workflow's models (`refs`, read before any session) in a read session (`read`),
    resolve each new entry's source (the Hub, Civitai), then add the entries in `write`.
    """
    with read() as session:
        plan = plan_import(refs, session=session, kind=kind, auth=auth)
    resolved: list[tuple[dict[str, Any], str, catalog.DepSpec]] = []
    for doc, dep_id, spec in plan.entries:
        try:
            resolved.append((doc, dep_id, catalog.resolve_spec(dep_id, spec, None, resolve)))
        except DepmanError as exc:
            plan.result.skipped.append({**doc, "reason": exc.message})
    return add_imported(plan.result, resolved, session=write)


def add_imported(
    result: ImportResult,
    entries: list[tuple[dict[str, Any], str, catalog.DepSpec]],
    *,
    session: Session,
) -> ImportResult:
    """Put the resolved entries of an import (no network: inside the write session)."""
    for doc, dep_id, spec in entries:
        if session.get(Dep, dep_id) is not None:
            result.skipped.append({**doc, "reason": f"dep {dep_id!r} was added meanwhile"})
            continue
        try:
            with session.begin_nested():
                dep = catalog.put_dep(dep_id, spec, session=session)
        except DepmanError as exc:
            result.skipped.append({**doc, "reason": exc.message})
            continue
        # A plain URL gives no hash: the agent can then only trust what it downloads.
        result.created.append(
            {**doc, "depId": dep_id, "downloadUrl": dep.url, "unverified": dep.sha256 is None}
        )
    return result


def plan_import(
    refs: list[ModelRef], *, session: Session, kind: str = "dynamic", auth: str = "none"
) -> ImportPlan:
    """The workflow's unknown models that carry a url, each with a new dep id."""
    result = ImportResult()
    plan = ImportPlan(result)
    taken = set(session.scalars(select(Dep.dep_id)))
    for match in match_workflow(refs, session=session):
        ref = match.ref
        doc = {"type": ref.model_type, "filename": ref.filename, "url": ref.url}
        if match.dep_ids:
            result.known.append({**doc, "depIds": match.dep_ids})
            continue
        if not ref.url:
            result.skipped.append({**doc, "reason": "the workflow gives no url for it"})
            continue
        if ref.model_type is None:
            result.skipped.append({**doc, "reason": "the workflow does not say its model folder"})
            continue
        dep_id = dep_id_for(ref, taken)
        spec = catalog.DepSpec(
            url=source_of_url(ref.url),
            model_type=ref.model_type,
            filename=ref.filename,
            kind=kind,
            auth=auth,
        )
        plan.entries.append((doc, dep_id, spec))
    return plan
