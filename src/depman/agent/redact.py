"""The one redaction used for every log line and every error the agent sends.

A URL loses its userinfo, query and fragment (Civitai and signed CDN URLs carry
tokens in the query; an API base URL may carry ``user:password@``). Text that
quotes a URL (an exception from http.client, a redirect target) is cleaned the
same way, and the secrets the agent knows (tokens, the shared secret, the
userinfo and query of every URL it was given) are cut wherever they appear,
even when a URL's shape (a space, a control character) hides where it ends.
Control characters are escaped so a URL cannot forge log lines.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
# scheme://[userinfo@]rest-up-to-whitespace: the userinfo, then ?query / #fragment, go.
_URL_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Shorter strings would cut ordinary words out of messages.
_MIN_SECRET_CHARS = 6

# Every signed CDN redirect adds one: the oldest of those go first past this many.
MAX_PASSING_SECRETS = 4096

_lock = threading.Lock()
_lasting: set[str] = set()  # tokens, the shared secret, catalog and API URL parts
_passing: dict[str, None] = {}  # redirect targets' signatures: insertion-ordered, bounded


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _strip_url(scheme: str, rest: str) -> str:
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # the userinfo ends at the last @
    for mark in ("?", "#"):
        authority = authority.partition(mark)[0]
        path = path.partition(mark)[0]
    return f"{scheme}{authority}{slash}{path}"


def redact_url(url: object) -> str:
    """``scheme://host[:port]/path`` of ``url``: no userinfo, query or fragment. Never raises."""
    text = str(url)
    match = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*://)(.*)", text, re.DOTALL)
    if match is None:
        # Not absolute (a relative redirect): drop the query all the same.
        stripped = text.partition("?")[0].partition("#")[0]
    else:
        stripped = _strip_url(match.group(1), match.group(2))
    return _escape_controls(_cut_secrets(stripped))


def register_secret(value: str | None, *, lasting: bool = True) -> None:
    """Cut ``value`` out of every later log line and error (``lasting=False``: for a while)."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            if lasting:
                _lasting.add(value)
                return
            _passing.pop(value, None)
            _passing[value] = None
            while len(_passing) > MAX_PASSING_SECRETS:
                del _passing[next(iter(_passing))]


def register_url(url: str | None, *, lasting: bool = True) -> None:
    """Cut the userinfo, query and fragment of ``url`` wherever they appear later."""
    if not url:
        return
    match = re.match(r"\s*[A-Za-z][A-Za-z0-9+.-]*://(.*)", url, re.DOTALL)
    rest = match.group(1) if match else url
    authority = rest.partition("/")[0]
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        register_secret(userinfo, lasting=lasting)
        for part in userinfo.split(":"):
            register_secret(part, lasting=lasting)
    for mark in ("?", "#"):
        if mark in rest:
            tail = rest.partition(mark)[2]
            register_secret(tail, lasting=lasting)
            for piece in re.split(r"[&;#?\s]", tail):
                register_secret(piece.partition("=")[2], lasting=lasting)


def _cut_secrets(text: str) -> str:
    with _lock:
        known = sorted((*_lasting, *_passing), key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with every URL redacted, every known secret cut and controls escaped."""
    cleaned = _cut_secrets(str(text))
    cleaned = _URL_IN_TEXT.sub(lambda m: _strip_url(m.group("scheme"), m.group("rest")),
                               cleaned)
    if keep_newlines:
        return "\n".join(_escape_controls(line) for line in cleaned.split("\n"))
    return _escape_controls(cleaned)


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to the finished message of every record (and its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string still gets logged, redacted
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info),
                                     keep_newlines=True)
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Redact every record of every handler the root logger has now."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
