"""Cross-site request forgery protection of the dashboard's action forms.

Every form carries a token bound to the visitor's session: an HMAC of the session's
random id under the admin token, so it needs no server-side storage, dies with
the session, and a page of another site can neither read nor guess it. The
session cookie is also `SameSite=Strict`, and a cross-site `Origin` is refused
outright. A request authenticated by an `Authorization: Bearer` header (scripts,
tests) needs no form token: a browser never adds that header on its own.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from depman.server.auth import bearer_token
from depman.server.dashboard import auth

FIELD = "csrf"
_CONTEXT = b"depman-dashboard-csrf-v1:"


class CsrfRejected(Exception):
    """A form post without a valid token, or from another origin."""


def csrf_token(request: Request) -> str:
    """The token the forms of this visitor's pages carry ('' without a session)."""
    token = auth.admin_token(request)
    # Revocation is the page dependency's check; here the parsed id is what counts.
    current = auth.verified_session(request.cookies.get(auth.COOKIE_NAME), token)
    if not token or current is None:
        return ""
    message = _CONTEXT + current.session_id.encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def check_csrf(request: Request, given: str) -> None:
    """Raise CsrfRejected unless the post is same-origin and carries this session's token."""
    admin = auth.admin_token(request)
    if auth.token_matches(bearer_token(request.headers.get("authorization")) or "", admin):
        return
    if not _same_origin(request):
        raise CsrfRejected("cross-origin form post")
    expected = csrf_token(request)
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRejected("missing or wrong form token")
