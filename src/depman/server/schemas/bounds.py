"""Bounded field types shared by every request model (agent, admin, jobs, fast lane).

Everything a client sends is bounded here, once, so that a value the database or
the log cannot take is refused with a 422 before any handler runs:

- ids: 1-200 characters (the columns' width), no '/', '\\', whitespace or control
  character (ids travel in URL paths and `<depId>.<gen>` item ids);
- integers: 0..2^63-1 (BIGINT), or 0..2^31-1 where the column is an INTEGER;
- text that is logged or stored: no control characters (a newline in a version
  would forge a log line); free-form error text from agents is cleaned instead of
  refused, so a v1 agent's failure report with a traceback is still recorded;
- lists an agent sends: at most `MAX_LIST_IDS` entries.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
MAX_ID_CHARS = 200
MAX_ITEM_ID_CHARS = 300
# Per inventory list of a heartbeat (installed static, installed dynamic,
# downloading, failed). A ComfyUI instance holds hundreds of models at most.
MAX_LIST_IDS = 10_000
MAX_TEXT_CHARS = 2000
MAX_URL_CHARS = 4096
# Free-form objects agents may attach (provider metadata, disk diagnostics).
MAX_JSON_DOC_CHARS = 16 * 1024

# Ids: what `core.catalog.validate_id` accepts, as a JSON-schema pattern.
ID_PATTERN = r"^[^/\\\s\x00-\x1f\x7f-\x9f]+$"
NO_CONTROLS_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(value: object) -> object:
    """Free-form text as it may be stored and logged: controls become spaces, length capped."""
    if isinstance(value, str):
        return _CONTROLS.sub(" ", value)[:MAX_TEXT_CHARS]
    return value


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(value)
    if len(text) > MAX_JSON_DOC_CHARS:
        raise ValueError(f"must be at most {MAX_JSON_DOC_CHARS} characters as JSON")
    if "\\u0000" in text:
        raise ValueError("must not contain NUL characters")
    return value


def _no_controls(value: str) -> str:
    if _CONTROLS.search(value):
        raise ValueError("must not contain control characters")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
ItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS, pattern=ID_PATTERN)
]
# Text shown and logged as given (versions, kinds, modes): refused when it holds controls.
ShortText = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS, pattern=NO_CONTROLS_PATTERN)]
SafeText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS, pattern=NO_CONTROLS_PATTERN)]
# Free-form error text: cleaned, never refused (a report must not be lost over its message).
CleanText = Annotated[str, BeforeValidator(clean_text)]
Url = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(_no_controls)
]
NonNegInt64 = Annotated[int, Field(ge=0, le=MAX_INT64)]
PositiveInt64 = Annotated[int, Field(ge=1, le=MAX_INT64)]
NonNegInt32 = Annotated[int, Field(ge=0, le=MAX_INT32)]
PositiveInt32 = Annotated[int, Field(ge=1, le=MAX_INT32)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False)]
IdList = Annotated[list[Id], Field(max_length=MAX_LIST_IDS)]
JsonDoc = Annotated[dict[str, Any], AfterValidator(_small_json)]

# Path and query parameters.
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
IdQuery = Annotated[
    str, Query(alias="instanceId", min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
]
