#!/usr/bin/env python3
"""Find functions, classes, methods and imports that nothing calls (CI runs this before pytest).

Tests and benchmarks count as callers. Fields of dataclasses and pydantic models are
left out: they are read by serialisation and by the dashboard's templates, which no
static reader sees. What a framework calls by name is listed below, with the reason.
Run it with ``uv run python .ci/dead_code.py``; it exits 1 and lists what it found.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from vulture import Vulture

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["src", "bench", "tests"]
# Unused functions, classes and methods score 60; unused imports 90; unreachable code 100.
MIN_CONFIDENCE = 60
KINDS = frozenset({"function", "class", "method", "property", "import", "unreachable_code"})

# Called by their decorator's framework: FastAPI routes and handlers, Typer commands,
# pydantic validators, SQLAlchemy event hooks, pytest fixtures, hypothesis tests and state machines.
IGNORE_DECORATORS = [
    "@router.*", "@page.*", "@fragment.*", "@public.*", "@app.*", "@*_app.*",
    "@model_validator", "@field_validator", "@event.listens_for",
    "@pytest.fixture", "@given", "@initialize", "@rule", "@invariant", "@precondition",
]
# Called by name by a framework.
IGNORE_NAMES = [
    "do_GET", "do_HEAD", "do_POST", "do_PUT", "log_message", "handle_error",  # http.server
    "data_received", "connection_made", "connection_lost",  # asyncio protocols
    "process_bind_param", "process_result_value",  # SQLAlchemy TypeDecorator
    "upgrade", "downgrade",  # Alembic revisions
    "pytest_*",  # pytest hooks
]
TEMPLATES = ROOT / "src" / "depman" / "server" / "dashboard" / "templates"
TEMPLATE_ATTRIBUTE = re.compile(r"\.\s*([A-Za-z_]\w*)")


def template_names() -> list[str]:
    """Attributes the dashboard's Jinja templates read (properties used only there)."""
    names: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        names.update(TEMPLATE_ATTRIBUTE.findall(template.read_text(encoding="utf-8")))
    return sorted(names)


def find_dead_code(paths: list[Path] | None = None) -> list[str]:
    """One report line per unused definition under ``paths`` (default: the project)."""
    vulture = Vulture(ignore_names=IGNORE_NAMES + template_names(),
                      ignore_decorators=IGNORE_DECORATORS)
    vulture.scavenge([str(path) for path in paths or [ROOT / name for name in PATHS]])
    return [item.get_report() for item in vulture.get_unused_code(min_confidence=MIN_CONFIDENCE)
            if item.typ in KINDS]


def main() -> int:
    found = find_dead_code()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
