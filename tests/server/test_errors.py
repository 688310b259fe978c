"""The error tree: one module defines every server error, and its docstring draws them all."""

from __future__ import annotations

import importlib
import pkgutil
import re

import depman
import depman.errors
from depman.errors import DepmanError
from depman.server.errors import error_body, error_response


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_server_error_is_in_the_tree() -> None:
    # Import the server and core so that an error class defined anywhere is seen.
    for package in ("depman.server", "depman.core", "depman.sources"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            importlib.import_module(info.name)
    tree = depman.errors.__doc__ or ""
    for cls in sorted(_all_subclasses(DepmanError), key=lambda c: c.__name__):
        assert cls.__module__ == "depman.errors", f"{cls.__name__} belongs in depman/errors.py"
        line = re.search(rf"[─└├│ ]{cls.__name__} +(.*)", tree)
        assert line, f"{cls.__name__} is missing from the tree in depman/errors.py"
        if cls.__name__ != "ConfigError":
            assert f"{cls.status} {cls.code}" in line.group(1), line.group(0)


def test_the_error_shape_is_built_in_one_place() -> None:
    response = error_response(404, "not_found", "no such dep", {"X-Test": "1"})
    assert response.status_code == 404 and response.headers["X-Test"] == "1"
    assert response.body == error_body("not_found", "no such dep")
    assert error_body("c", "m") == b'{"error":{"code":"c","message":"m"}}'
