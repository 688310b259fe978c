"""Agent requests, parsed once into the typed values the pipeline takes.

Two fronts parse them: the gateway's ASGI front (`asgi.py`) from the scope and
body, and FastAPI for the routes (`server/api/agent_protocol.py`,
`server/api/agent_items.py`) when the front leaves a request to it. Both validate
with the same models: the bodies of `server/schemas/agent.py`, and the query
models below, which the routes declare as their query parameters. The front takes
what it can parse exactly as FastAPI would (the last of a repeated query
parameter, the first of a repeated header, a JSON body sent as
`application/json`); anything else, invalid input included, it leaves to
FastAPI, so every parse error is FastAPI's own 422 (or 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Scope

from depman.server.auth import bearer_token
from depman.server.schemas.bounds import Id, ItemId
from depman.server.state import scope_client
from depman.settings import MAX_WAIT_SECONDS

MAX_POLL_LIMIT = 1000
DEFAULT_POLL_LIMIT = 25
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
    json_body: bool  # `Content-Type: application/json` (parameters such as charset aside)


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
    return FrontRequest(caller, media_type == b"application/json")


def parse_query(model: type[QueryModel], query_string: bytes) -> QueryModel | None:
    """The query as `model`, from the same key/value pairs FastAPI reads; None: not valid."""
    pairs = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    try:
        return model.model_validate(pairs)
    except ValidationError:
        return None


def parse_body(model: type[BodyModel], body: bytes) -> BodyModel | None:
    """A JSON body as `model`; None: not valid (FastAPI answers why)."""
    try:
        return model.model_validate_json(body)
    except ValueError:  # ValidationError, or a validator's own error
        return None
