"""The Hugging Face and Civitai API answers resolution reads, as pydantic models.

Only the fields depman uses are declared (others are ignored), each with the
type and bounds a real answer has. An answer that does not fit (a list where an
object belongs, `hashes` as a list, a size that is NaN, 1e30 or past 2**63) is
the upstream's fault, not the caller's: `parse_answer` turns the validation
error into `SourceUnavailable`, a 502 `source_unavailable` naming the field.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from depman.errors import SourceUnavailable

MAX_BYTES = 2**63 - 1  # what the store's size columns hold
SHA256_HEX = r"^(sha256:)?[0-9a-fA-F]{64}$"

Size = Annotated[int, Field(ge=0, le=MAX_BYTES, strict=True)]
Sha256 = Annotated[str, Field(pattern=SHA256_HEX)]
Text = Annotated[str, Field(max_length=4096)]
# Kilobytes as a float; finite and below the store's limit once in bytes.
SizeKb = Annotated[float, Field(ge=0, le=MAX_BYTES / 1024, allow_inf_nan=False, strict=True)]


class Answer(BaseModel):
    """An API answer: unknown fields ignored, declared ones checked."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class HfRevision(Answer):
    """`GET /api/models/{repo}/revision/{rev}`."""

    sha: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[0-9A-Za-z]+$")]


class HfLfs(Answer):
    """The LFS pointer of a large file."""

    oid: Sha256
    size: Size | None = None


class HfEntry(Answer):
    """One entry of `paths-info` or `tree`."""

    type: Text | None = None
    path: Text
    size: Size | None = None
    lfs: HfLfs | None = None


class CivitaiHashes(Answer):
    """The hashes of a Civitai file (only SHA256 is used)."""

    sha256: Sha256 | None = Field(None, alias="SHA256")


class CivitaiFileAnswer(Answer):
    """One file of a model version."""

    name: Text | None = None
    type: Text | None = None
    primary: bool | None = None
    size_kb: SizeKb | None = Field(None, alias="sizeKB")
    hashes: CivitaiHashes | None = None
    download_url: Text | None = Field(None, alias="downloadUrl")


class CivitaiModel(Answer):
    """The model a version belongs to."""

    type: Text | None = None


class CivitaiVersionAnswer(Answer):
    """`GET /api/v1/model-versions/{id}`."""

    files: list[CivitaiFileAnswer] = Field(default_factory=list)
    model: CivitaiModel | None = None


def parse_answer(shape: Any, body: Any, *, who: str, what: str) -> Any:
    """`body` validated as `shape` (a model or a type like `list[HfEntry]`); a 502 otherwise."""
    try:
        return _adapter(shape).validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        raise SourceUnavailable(
            f"{who} answered an unexpected document for {what}: {where}: {first['msg']}"
        ) from None


@cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)
