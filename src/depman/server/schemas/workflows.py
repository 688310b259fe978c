"""Workflow bodies: a ComfyUI workflow (UI or API format) in, its models out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from depman.server.schemas import ApiModel


class WorkflowIn(ApiModel):
    """`POST /admin/workflows/deps`: the workflow JSON as ComfyUI saved it."""

    workflow: dict[str, Any]


class WorkflowImportIn(WorkflowIn):
    """`POST /admin/workflows/import`: kind and auth of the entries it adds."""

    kind: Literal["static", "dynamic"] = "dynamic"
    auth: Literal["none", "hf_token", "civitai_token"] = "none"


class WorkflowModel(ApiModel):
    """One model file of the workflow and the deps that provide it (none: unknown)."""

    model_type: str | None = Field(None, alias="type")
    filename: str
    url: str | None = None
    node_types: list[str] = Field(default_factory=list)
    dep_ids: list[str] = Field(default_factory=list)


class WorkflowDepsOut(ApiModel):
    """The workflow's models, the deps a job needs, the files the catalog lacks."""

    models: list[WorkflowModel]
    dep_ids: list[str]
    unknown: list[WorkflowModel]


class ImportedModel(ApiModel):
    """A model `import` added, skipped (with the reason) or already had."""

    model_type: str | None = Field(None, alias="type")
    filename: str
    url: str | None = None
    dep_id: str | None = None
    dep_ids: list[str] | None = None
    reason: str | None = None
    # Added entries: where agents download it from, and whether it has no sha256 to check.
    download_url: str | None = None
    unverified: bool | None = None


class WorkflowImportOut(ApiModel):
    """What `import` did."""

    created: list[ImportedModel]
    skipped: list[ImportedModel]
    known: list[ImportedModel]
