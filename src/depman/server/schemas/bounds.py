"""Bounded field types shared by every request model (agent, admin, jobs, agent gateway).

Everything a client sends is bounded here, once, so that a value the database or
the log cannot take is refused with a 422 before any handler runs:

- ids: 1-200 characters (the columns' width), no '/', '\\', whitespace or control
  character (ids travel in URL paths and `<depId>.<gen>` item ids);
- integers: 0..2^63-1 (BIGINT), or 0..2^31-1 where the column is an INTEGER;
- text that is logged or stored: no control characters (a newline in a version
  would forge a log line); free-form error text from agents is cleaned instead of
  refused, so a v1 agent's failure report with a traceback is still recorded;
- lists an agent sends: at most `MAX_LIST_IDS` entries;
- agent telemetry (descriptive text and documents: provider, progress stages,
  disk paths and diagnostics) is trimmed instead of refused, so a cosmetic field
  never costs an agent its request: text over its cap is cut and its control
  characters replaced (`TelemetryText`), a document nested deeper than
  `MAX_JSON_DOC_DEPTH`, longer than `MAX_JSON_DOC_CHARS` as JSON or holding NaN
  is dropped, and NUL characters in it replaced (`TelemetryDoc`). Each trim is counted and
  logged (`schemas/telemetry.py`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from depman.server.schemas.telemetry import note

MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
MAX_ID_CHARS = 200
MAX_ITEM_ID_CHARS = 300
# Per inventory list of a heartbeat (installed static, installed dynamic,
# downloading, failed). A ComfyUI instance holds hundreds of models at most.
MAX_LIST_IDS = 10_000
MAX_TEXT_CHARS = 2000
MAX_URL_CHARS = 4096
# A DNS host name (`servedBy.host`, `badSources[].host` of a status report).
MAX_HOST_CHARS = 253
# Free-form objects agents may attach (provider metadata, disk diagnostics):
# ids and a few figures, a mount table at most.
MAX_JSON_DOC_CHARS = 16 * 1024
MAX_JSON_DOC_DEPTH = 8
# Sources a depman agent gave up on in one status report (an entry has at most 16
# sources plus the mirror; a few reasons each at most).
MAX_BAD_SOURCES = 64

# Ids: what `core.catalog.validate_id` accepts, as a JSON-schema pattern.
ID_PATTERN = r"^[^/\\\s\x00-\x1f\x7f-\x9f]+$"
# `<depId>.<generation>`: the generation in ASCII digits, at most MAX_INT32 (its column).
ITEM_ID_PATTERN = r"^[^/\\\s\x00-\x1f\x7f-\x9f]+\.[0-9]{1,10}$"
NO_CONTROLS_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(value: object) -> object:
    """Free-form text as it may be stored and logged: controls become spaces, length capped."""
    if isinstance(value, str):
        return _CONTROLS.sub(" ", value)[:MAX_TEXT_CHARS]
    return value


class _Telemetry:
    """Annotated metadata: `trim` runs before the type's own validation; the rule is documented."""

    def trim(self, value: object) -> object:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.trim, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        found = handler(schema)
        found["description"] = self.describe()
        return found


@dataclass(frozen=True)
class TelemetryText(_Telemetry):
    """`Annotated[str, TelemetryText(field, max_chars)]`: controls become spaces, cut, noted."""

    field: str
    max_chars: int

    def trim(self, value: object) -> object:
        """The value as kept; a wrong type is left for the string check to refuse."""
        if not isinstance(value, str):
            return value
        done = []
        if _CONTROLS.search(value):
            value = _CONTROLS.sub(" ", value)
            done.append("control characters replaced")
        if len(value) > self.max_chars:
            done.append(f"cut to {self.max_chars} characters from {len(value)}")
            value = value[: self.max_chars]
        if done:
            note(self.field, ", ".join(done))
        return value

    def describe(self) -> str:
        """The rule, for the OpenAPI description."""
        return (
            f"Telemetry: cut to {self.max_chars} characters, control characters replaced "
            "by spaces (never refused for its length or content)."
        )


@dataclass(frozen=True)
class TelemetryDoc(_Telemetry):
    """`Annotated[dict[str, Any] | None, TelemetryDoc(field)]`: too big or deep → None, noted."""

    field: str

    def trim(self, value: object) -> object:
        """The document as kept; a wrong type is left for the object check to refuse."""
        if not isinstance(value, dict):
            return value
        if _deeper_than(value, MAX_JSON_DOC_DEPTH):
            note(self.field, f"dropped: nested deeper than {MAX_JSON_DOC_DEPTH} levels")
            return None
        try:
            text = json.dumps(value, allow_nan=False)
        except ValueError:  # NaN or Infinity: Python's parser takes them, JSON columns do not
            note(self.field, "dropped: NaN or Infinity in it")
            return None
        if "\\u0000" in text:
            cleaned = _without_nul(value)
            if cleaned != value:
                note(self.field, "NUL characters replaced")
                value, text = cleaned, json.dumps(cleaned)
        if len(text) > MAX_JSON_DOC_CHARS:
            note(self.field, f"dropped: {len(text)} characters as JSON, over {MAX_JSON_DOC_CHARS}")
            return None
        return value

    def describe(self) -> str:
        """The rule, for the OpenAPI description."""
        return (
            f"Telemetry: dropped when nested deeper than {MAX_JSON_DOC_DEPTH} levels, "
            f"longer than {MAX_JSON_DOC_CHARS} characters as JSON or holding NaN or Infinity; "
            "NUL characters replaced by spaces (never refused for its size or content)."
        )


def _deeper_than(value: object, levels: int) -> bool:
    """Whether containers nest more than `levels` deep (a flat object is one level)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return levels == 0 or any(_deeper_than(child, levels - 1) for child in children)


def _without_nul(value: Any) -> Any:
    """The document with NUL characters in its keys and strings replaced by spaces."""
    if isinstance(value, str):
        return value.replace("\x00", " ")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_without_nul(child) for child in value]
    return value


def _no_controls(value: str) -> str:
    if _CONTROLS.search(value):
        raise ValueError("must not contain control characters")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


def _generation_in_range(value: str) -> str:
    if int(value.rpartition(".")[2]) > MAX_INT32:
        raise ValueError(f"the generation after the last '.' must be at most {MAX_INT32}")
    return value


ItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS, pattern=ID_PATTERN)
]
# An itemId as this server writes them: what a status report must carry (else a 422; the
# item check answers any other id 404 "exists": false, which field agents act on).
WellFormedItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS, pattern=ITEM_ID_PATTERN),
    AfterValidator(_generation_in_range),
]
# Text shown and logged as given (versions, kinds, modes): refused when it holds controls.
ShortText = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS, pattern=NO_CONTROLS_PATTERN)]
SafeText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS, pattern=NO_CONTROLS_PATTERN)]
# Free-form error text: cleaned, never refused (a report must not be lost over its message).
CleanText = Annotated[str, BeforeValidator(clean_text)]
Url = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(_no_controls)
]
HostText = Annotated[
    str, StringConstraints(max_length=MAX_HOST_CHARS, pattern=NO_CONTROLS_PATTERN)
]
NonNegInt64 = Annotated[int, Field(ge=0, le=MAX_INT64)]
PositiveInt64 = Annotated[int, Field(ge=1, le=MAX_INT64)]
NonNegInt32 = Annotated[int, Field(ge=0, le=MAX_INT32)]
PositiveInt32 = Annotated[int, Field(ge=1, le=MAX_INT32)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e18, allow_inf_nan=False)]
IdList = Annotated[list[Id], Field(max_length=MAX_LIST_IDS)]

# Path and query parameters.
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
IdQuery = Annotated[
    str, Query(alias="instanceId", min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
]
