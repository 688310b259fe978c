"""Turning what went wrong into a classified DownloadError: local, network, server, content.

A full disk, a file name the filesystem refuses or a URL http.client rejects is
a local error: retrying cannot help, so it fails the item at once with a clear
message. Resets, refusals and timeouts are network errors and are retried.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl

from .errors import NETWORK, DiskFull, DownloadError, InvalidItem, LocalFileError
from .redact import redact

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The filesystem (not the network) said no; the same write would fail again.
LOCAL_ERRNOS = frozenset({
    errno.ENAMETOOLONG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
    errno.ENOTDIR, errno.ELOOP, errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.EIO,
    errno.EEXIST, errno.ENOENT, errno.EXDEV,
})


def classify(exc: BaseException, where: str = "") -> DownloadError:
    """The DownloadError for ``exc`` (returned as is when it already is one)."""
    if isinstance(exc, DownloadError):
        return exc
    place = f" ({where})" if where else ""
    if isinstance(exc, http.client.InvalidURL) or (
            isinstance(exc, ValueError) and not isinstance(exc, OSError)):
        return InvalidItem(redact(f"Invalid URL: {exc}"))
    if isinstance(exc, OSError) and not _is_network(exc):
        detail = redact(exc.strerror or exc)
        if exc.errno in DISK_FULL_ERRNOS:
            return DiskFull(f"{detail}{place}")
        if exc.errno in LOCAL_ERRNOS:
            return LocalFileError(f"{detail}{place}")
    return DownloadError(redact(f"Connection error: {exc.__class__.__name__}: {exc}"),
                         category=NETWORK)


def _is_network(exc: OSError) -> bool:
    # Socket errors: the classes say so; a plain OSError with a file errno is local.
    if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError, socket.gaierror,
                        socket.herror, socket.timeout)):
        return True
    return exc.errno not in DISK_FULL_ERRNOS | LOCAL_ERRNOS
