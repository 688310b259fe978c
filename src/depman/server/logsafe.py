"""Log lines that quote client input cannot forge other lines or drive a terminal.

`quoted()` is for values a line names (ids, versions, addresses);
`EscapingFormatter` escapes every control character left in a formatted message
(a newline, an ESC sequence), whatever a caller passed in. Tracebacks are
appended after it, unchanged.
"""

from __future__ import annotations

import logging
import re

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """Control characters as `\\xNN`."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def quoted(value: object, limit: int = 200) -> str:
    """A value for a log line: escaped, cut at `limit` characters."""
    text = escape(str(value))
    return text if len(text) <= limit else text[:limit] + "…"


class EscapingFormatter(logging.Formatter):
    """A formatter whose messages hold no raw control characters."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)
