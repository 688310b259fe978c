"""Agent exceptions, each with a stable ``code``.

    AgentError
    ├── ConfigError              a bad env value; start-up stops
    ├── UnsafePath               destRelativePath absolute or escaping the ComfyUI folder
    ├── ServerError              the control plane answered an error or could not be reached
    │   └── Unauthorized         401/403: register again
    ├── Stopping                 the agent was asked to stop while waiting
    ├── UpdateFailed             an offered agent build could not be fetched (tried again later)
    │   └── UpdateRefused        an offered build failed its checks (tried again after backoff)
    └── DownloadError            a dependency could not be fetched (see ``retryable``)
        ├── DomainNotAllowed     a URL or redirect hop outside DM_ALLOWED_DOMAINS
        ├── MissingToken         the catalog entry needs HF_TOKEN / CIVITAI_TOKEN
        ├── InsufficientDiskSpace
        ├── DiskFull             the disk filled up while writing (ENOSPC / EDQUOT)
        ├── LocalFileError       any other filesystem refusal (name too long, read-only...)
        ├── InvalidItem          the server sent an item the agent cannot run
        ├── VerificationError    size or sha256 mismatch
        │   ├── SizeCapExceeded  the body ran past expectedSizeBytes
        │   └── NotTheFile       a body that cannot be the file (an HTML or JSON page)
        ├── Stalled              the bytes came slower than the stall floor for too long
        └── DownloadInterrupted  stopped at a resumable point (the .partial is kept)

Every DownloadError has a ``category``: ``local`` (this node: disk, files,
settings, the item's own data), ``network`` (connect, read, timeouts),
``server`` (an HTTP status from the origin) or ``content`` (the bytes are not
what the catalog says). Only transient errors are ``retryable``. ``status`` is
the origin's HTTP status when it answered one; ``reason`` says why a source was
given up on (the codes of a status report's ``badSources``, docs/agent.md).
"""

from __future__ import annotations

LOCAL = "local"
NETWORK = "network"
SERVER = "server"
CONTENT = "content"


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    code = "agent_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    """An environment variable has a value the agent cannot use."""

    code = "config_error"

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class UnsafePath(AgentError):
    """A destination path that would land outside the ComfyUI folder (or its model root),
    or a model root this agent does not know: a local error, retrying cannot help."""

    code = "unsafe_path"
    category = LOCAL

    def report(self) -> str:
        """The text the server and the log get: the class first, then what happened."""
        return f"{self.category} error: {self.message}"


class ServerError(AgentError):
    """The control plane failed a call."""

    code = "server_error"

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in (408, 429)


class Unauthorized(ServerError):
    """401/403 from the control plane: the agent registers again."""

    code = "unauthorized"


class Stopping(AgentError):
    """Raised out of a wait when the agent is shutting down."""

    code = "stopping"


class UpdateFailed(AgentError):
    """An offered agent build could not be fetched or installed; tried again later."""

    code = "update_failed"


class UpdateRefused(UpdateFailed):
    """An offered agent build failed its checks (sha256, format): refused, and fetched
    again only after a backoff (a captive portal's page is not the build)."""

    code = "update_refused"

    def __init__(self, message: str, received_sha256: str | None = None) -> None:
        super().__init__(message)
        self.received_sha256 = received_sha256


class DownloadError(AgentError):
    """A dependency file could not be fetched."""

    code = "download_failed"
    category = NETWORK

    reason: str | None = None

    def __init__(self, message: str, *, retryable: bool = True,
                 retry_after: float | None = None, category: str | None = None,
                 status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        if category is not None:
            self.category = category
        if reason is not None:
            self.reason = reason

    def report(self) -> str:
        """The text the server and the log get: the class first, then what happened."""
        return f"{self.category} error: {self.message}"


class DomainNotAllowed(DownloadError):
    code = "domain_not_allowed"
    category = LOCAL

    def __init__(self, host: str) -> None:
        super().__init__(f"Download domain not allowed: {host} (add {host} to "
                         f"DM_ALLOWED_DOMAINS on the agent; the list replaces the default "
                         f"hosts)",
                         retryable=False)
        self.host = host


class MissingToken(DownloadError):
    code = "missing_token"
    category = LOCAL

    def __init__(self, variable: str) -> None:
        super().__init__(f"Missing {variable}", retryable=False)


class InsufficientDiskSpace(DownloadError):
    code = "insufficient_disk_space"
    category = LOCAL

    def __init__(self, message: str) -> None:
        super().__init__(f"Insufficient disk space: {message}", retryable=False)


class DiskFull(DownloadError):
    """ENOSPC/EDQUOT while writing: the partial is removed, the item fails."""

    code = "disk_full"
    category = LOCAL

    def __init__(self, message: str) -> None:
        super().__init__(f"Disk full: {message}", retryable=False)


class LocalFileError(DownloadError):
    """The filesystem refused (name too long, read-only, permission): retrying cannot help."""

    code = "local_file_error"
    category = LOCAL

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class InvalidItem(DownloadError):
    """A queue item (or its URL) the agent cannot act on; reported failed with the reason."""

    code = "invalid_item"
    category = LOCAL

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class VerificationError(DownloadError):
    code = "verification_failed"
    category = CONTENT


class SizeCapExceeded(VerificationError):
    """The origin sent more than the catalog's expectedSizeBytes (or than the disk allows)."""

    code = "size_cap_exceeded"
    reason = "size_mismatch"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class NotTheFile(VerificationError):
    """The origin answered a page (a login form, an "Unauthorized" JSON) instead of the file."""

    code = "not_the_file"
    reason = "not_the_file"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Stalled(DownloadError):
    """Throughput stayed under the stall floor (DM_STALL_BYTES_PER_SECOND) for too long."""

    code = "stalled"
    reason = "stalled"


class DownloadInterrupted(DownloadError):
    code = "interrupted"

    def __init__(self, message: str = "Download interrupted by shutdown") -> None:
        super().__init__(message, retryable=False)
