"""Agent requests, parsed once into the typed values the pipeline takes.

The gateway's ASGI front (`asgi.py`) parses every agent request here, from the
scope and the body, with the bodies of `server/schemas/agent.py` and the query
models below; what does not parse is answered 422 in the API's one error shape
(`server/errors.validation_message`). It reads a request as HTTP frameworks do
(the last of a repeated query parameter, the first of a repeated header, a JSON
body sent as `application/json`, `application/*+json` or without a content
type). The FastAPI routes (`server/api/agent_protocol.py`, `agent_items.py`)
declare the same models so `/openapi.json` documents them; the front answers
before any route is reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Scope

from depman.errors import ValidationFailed
from depman.server.auth import bearer_token
from depman.server.errors import validation_message
from depman.server.schemas.bounds import Id, ItemId
from depman.server.state import scope_client
from depman.settings import MAX_WAIT_SECONDS

MAX_POLL_LIMIT = 1000
DEFAULT_POLL_LIMIT = 25
NOT_JSON = "request body must be JSON (Content-Type: application/json)"
QueryModel = TypeVar("QueryModel", bound=BaseModel)
BodyModel = TypeVar("BodyModel", bound=BaseModel)


class PollQuery(BaseModel):
    """The query of `GET /dependencies/queue`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_id: Id = Field(alias="instanceId")
    limit: Annotated[int, Field(ge=1, le=MAX_POLL_LIMIT)] = DEFAULT_POLL_LIMIT
    wait_seconds: Annotated[
        float,
        Field(
            alias="waitSeconds", ge=0, le=MAX_WAIT_SECONDS, description="Long-poll (extension)."
        ),
    ] = 0


class ItemQuery(BaseModel):
    """The query of `GET /dependencies/queue-item`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_id: Id = Field(alias="instanceId")
    item_id: ItemId = Field(alias="itemId")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent an agent request: its credentials and how it reached this server."""

    token: str | None  # the bearer token, if any
    secret: str | None  # X-DM-Secret (register)
    client: str  # the client's address: failure records and backoff are per address
    scope: Scope  # scheme and Host: `agentUpdate`'s download URL


@dataclass(frozen=True, slots=True)
class FrontRequest:
    """What the ASGI front reads of a request's headers (the first of each, as Starlette)."""

    caller: Caller
    json_body: bool  # a JSON body: `application/json`, `application/*+json` or no content type


def caller_of(scope: Scope, token: str | None, secret: str | None = None) -> Caller:
    """The caller of a request: its bearer token, its `X-DM-Secret`, its address."""
    return Caller(token, secret, scope_client(scope), scope)


def read_front(scope: Scope) -> FrontRequest:
    """The headers the front needs, decoded as Starlette decodes them (latin-1)."""
    authorization = secret = content_type = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"x-dm-secret" and secret is None:
            secret = value.decode("latin-1")
    media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
    caller = caller_of(scope, bearer_token(authorization), secret)
    json_body = content_type is None or media_type == b"application/json"
    if media_type.startswith(b"application/") and media_type.endswith(b"+json"):
        json_body = True
    return FrontRequest(caller, json_body)


def parse_query(model: type[QueryModel], query_string: bytes) -> QueryModel:
    """The query as `model` (the last of a repeated parameter counts); raises
    `ValidationFailed` saying what is wrong."""
    pairs = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    try:
        return model.model_validate(pairs)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(_located("query", exc))) from exc


def parse_body(model: type[BodyModel], body: bytes, *, json_body: bool) -> BodyModel:
    """A JSON body as `model`; raises `ValidationFailed` saying what is wrong."""
    if not json_body:
        raise ValidationFailed(NOT_JSON)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(_located("body", exc))) from exc
    except ValueError as exc:  # a validator's own error
        raise ValidationFailed(f"body: {exc}") from exc


def _located(where: str, exc: ValidationError) -> list[dict[str, object]]:
    return [{**err, "loc": (where, *err.get("loc", ()))} for err in exc.errors()]
