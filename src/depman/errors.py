"""The control plane's error tree. Every error has a stable `code` and an HTTP status.

    DepmanError                      500 internal
    ├── ValidationFailed             422 validation_failed
    │   └── UnknownServerType        422 unknown_server_type
    ├── NotFound                     404 not_found
    │   └── InstanceNotFound         404 instance_not_found
    ├── Conflict                     409 conflict
    │   └── InvalidTransition        409 invalid_transition
    ├── SourceUnavailable            502 source_unavailable
    ├── AuthError                    401 unauthorized
    │   ├── MissingCredentials       401 unauthorized (not counted as a failed guess)
    │   └── Forbidden                403 forbidden
    ├── TooManyFailures              429 too_many_failures (with Retry-After)
    ├── BuildTooLarge                413 too_large
    ├── UploadCut                    400 bad_request
    ├── BundleUnavailable            503 unavailable
    └── ConfigError                  (start-up only) config_error

The API renders each as `{"error": {"code", "message"}}` with its status.
Messages never carry secrets.
"""

from __future__ import annotations


class DepmanError(Exception):
    """Root of depman's server-side errors."""

    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(DepmanError):
    """Input that is well-formed JSON but violates a domain rule."""

    code = "validation_failed"
    status = 422


class UnknownServerType(ValidationFailed):
    """A register, on-start script or instance names a server type the server does not know."""

    code = "unknown_server_type"


class NotFound(DepmanError):
    """A named object does not exist."""

    code = "not_found"
    status = 404


class InstanceNotFound(NotFound):
    """Register could not find the instance by id or ip."""

    code = "instance_not_found"


class Conflict(DepmanError):
    """The request clashes with the current state."""

    code = "conflict"
    status = 409


class InvalidTransition(Conflict):
    """A job or item cannot move to the requested state from its current one."""

    code = "invalid_transition"


class SourceUnavailable(DepmanError):
    """The Hugging Face or Civitai API did not answer a source resolution."""

    code = "source_unavailable"
    status = 502


class AuthError(DepmanError):
    """Missing or wrong credentials."""

    code = "unauthorized"
    status = 401


class MissingCredentials(AuthError):
    """No credentials offered (or none can be): not a guess, so not counted as one."""


class Forbidden(AuthError):
    """Valid credentials that may not touch this object."""

    code = "forbidden"
    status = 403


class TooManyFailures(DepmanError):
    """The client failed to authenticate too often: wait `retry_after` seconds."""

    code = "too_many_failures"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentications from this address; retry in {retry_after} s"
        )
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class BuildTooLarge(DepmanError):
    """An uploaded agent build over `MAX_BUILD_BYTES`."""

    code = "too_large"
    status = 413


class UploadCut(DepmanError):
    """The upload ended before its last byte (the client left, or the body limit cut it)."""

    code = "bad_request"
    status = 400


class BundleUnavailable(DepmanError):
    """The agent bundle cannot be built in this installation."""

    code = "unavailable"
    status = 503


class ConfigError(DepmanError):
    """Bad settings at start-up."""

    code = "config_error"
    status = 500
