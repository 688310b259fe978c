"""Agent telemetry over its bounds: the request is taken, the telemetry trimmed.

Descriptive fields agents send (provider, progress stages, disk diagnostics;
see `bounds.TelemetryText` and `bounds.TelemetryDoc`) are cut, cleaned or
dropped instead of refused: a field agent whose `provider` is one character
too long must not lose its heartbeat and look dead. What was trimmed is noted
while the request validates; once it has validated, the request model reports
it here: counted per field in `depman_agent_telemetry_trimmed_total{field}`,
and logged at most once per `LOG_EVERY_SECONDS` per instance, naming fields
and lengths, never the values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, NamedTuple, Self

from pydantic import ValidatorFunctionWrapHandler, model_validator

from depman.server.logsafe import quoted
from depman.server.metrics import TRIMMED
from depman.server.schemas import ApiModel

log = logging.getLogger("depman.server.telemetry")
LOG_EVERY_SECONDS = 3600.0
# Instances whose last line is remembered; the oldest are forgotten past it.
MAX_SOURCES = 50_000

class Trim(NamedTuple):
    """One telemetry value changed on the way in: which field, and what was done."""

    field: str
    action: str


# The trims of the request model being validated (None outside one).
_pending: ContextVar[list[Trim] | None] = ContextVar("telemetry_pending", default=None)
# The last report made in this request's context: one request validated twice
# (the agent gateway, then the handler) is reported once.
_reported: ContextVar[tuple[Any, ...] | None] = ContextVar("telemetry_reported", default=None)


def note(field: str, action: str) -> None:
    """Record a trim of the request being validated (reported once it has validated)."""
    pending = _pending.get()
    if pending is None:
        _report("request=?", "", (Trim(field, action),))
    else:
        pending.append(Trim(field, action))


class TelemetryCarrier(ApiModel):
    """A request model whose telemetry may be trimmed; reports the trims of a valid request."""

    def telemetry_source(self) -> str:
        """What the log line names: the instance the request is about."""
        instance_id: str | None = getattr(self, "instance_id", None)
        return f"instanceId={quoted(instance_id)}" if instance_id else ""

    @model_validator(mode="wrap")
    @classmethod
    def _report_trims(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Self:
        trims: list[Trim] = []
        token = _pending.set(trims)
        try:
            model: Self = handler(data)
        finally:
            _pending.reset(token)
        if trims:  # a refused request (422) reports nothing: nothing of it was taken
            request = "request=" + cls.__name__.removesuffix("Request").lower()
            source = model.telemetry_source()
            key = (request, source, tuple(trims))
            if _reported.get() != key:
                _reported.set(key)
                _report(request, source, tuple(trims))
        return model


class _LogLimiter:
    """At most one line per source per LOG_EVERY_SECONDS; the rest are counted into the next."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, source: str) -> int | None:
        """None: stay quiet; else how many reports this line stands for."""
        now = time.monotonic()
        with self._lock:
            last = self._last.pop(source, None)
            unlogged = (last[1] if last else 0) + 1
            if last is None or now - last[0] >= LOG_EVERY_SECONDS:
                self._last[source] = (now, 0)
                answer: int | None = unlogged
            else:
                self._last[source] = (last[0], unlogged)
                answer = None
            while len(self._last) > MAX_SOURCES:
                self._last.popitem(last=False)
        return answer


_limiter = _LogLimiter()


def _report(request: str, source: str, trims: tuple[Trim, ...]) -> None:
    for trim in trims:
        TRIMMED.labels(trim.field).inc()
    reports = _limiter.due(source)
    if reports is None:
        return
    fields = "; ".join(f"{trim.field}: {trim.action}" for trim in dict.fromkeys(trims))
    log.warning(
        "agent telemetry trimmed, request taken: %s fields=[%s]%s",
        f"{request} {source}".rstrip(),
        fields,
        f" ({reports} trimmed requests since the last line)" if reports > 1 else "",
    )
