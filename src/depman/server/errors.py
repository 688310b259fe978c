"""Exception handlers: every error is `{"error": {"code", "message"}}` with its status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from depman.errors import DepmanError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_failures",
    415: "unsupported_media_type",
    422: "validation_failed",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape, built here only (`error_body` is its encoded body)."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def error_body(code: str, message: str) -> bytes:
    """The body of `error_response`, for answers sent below FastAPI (raw ASGI)."""
    return bytes(error_response(500, code, message).body)


def validation_message(errors: Sequence[Any]) -> str:
    """What was wrong with a request, from Pydantic's errors (`loc` as FastAPI gives it:
    `query`, `body`, …), as every 422 of the API says it."""
    parts = []
    for err in list(errors)[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def response_for(exc: Exception) -> JSONResponse:
    """The answer to an exception raised while answering a request (a route or the agent
    gateway): a `DepmanError` by its code and status, database errors by their kind."""
    if isinstance(exc, DepmanError):
        return error_response(exc.status, exc.code, exc.message, getattr(exc, "headers", None))
    if isinstance(exc, IntegrityError):
        log.info("integrity conflict: %s", type(exc.orig).__name__)
        return error_response(
            409, "conflict", "the request conflicts with a concurrent change; retry"
        )
    if isinstance(exc, DataError):
        # A value the schemas let through but the column refuses: the client's input.
        log.info("value refused by the database: %s", type(exc.orig).__name__)
        return error_response(422, "validation_failed", "a value is out of range for the database")
    if isinstance(exc, OperationalError):
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return error_response(503, "unavailable", "the database is busy or unavailable; retry")
    log.error("unexpected error", exc_info=exc)
    return error_response(500, "internal", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_failed", validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def _raised(_request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    for raised in (DepmanError, IntegrityError, DataError, OperationalError, Exception):
        app.add_exception_handler(raised, _raised)
