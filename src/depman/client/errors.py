"""Errors of the command-line client. Each has a stable `code` and a message fit to print.

    ClientError                      the control plane answered an error or could not be reached
    ├── Unreachable                  connection refused, DNS failure, timeout
    ├── AuthFailed                   401/403: no, wrong, or too weak a token
    └── FleetFileError               a fleet file that cannot be read, parsed or validated

Messages never carry the admin token.
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of the client's errors; `status` is the HTTP status when there was one."""

    def __init__(
        self, message: str, *, code: str = "client_error", status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Unreachable(ClientError):
    """The server could not be reached or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unreachable")


class AuthFailed(ClientError):
    """The server refused the token (401) or its rights (403)."""


class FleetFileError(ClientError):
    """A fleet file is unreadable, not YAML, or violates the fleet schema.

    `problems` holds one line per problem, each naming the file, line and key.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}:\n{lines}", code="invalid_fleet_file")
        self.path = path
        self.problems = problems
