"""Pydantic models of the API: camelCase aliases as in the protocol, unknown fields ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every request and response model."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ErrorBody(ApiModel):
    """The error object."""

    code: str
    message: str


class ErrorResponse(ApiModel):
    """Every error answer: `{"error": {"code", "message"}}`."""

    error: ErrorBody
