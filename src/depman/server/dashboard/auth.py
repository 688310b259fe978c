"""Dashboard access: the admin token, as a bearer header or a signed session cookie.

The cookie never holds the token: it holds `<expires>.<hmac(token, expires)>`, so
a leaked cookie dies at its expiry and every cookie dies when the token rotates.
Logging out records the cookie as revoked in the database (`core/sessions.py`),
so every server process refuses it from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Request

from depman.core.sessions import is_revoked
from depman.errors import AuthError
from depman.server.auth import attempt, bearer_token
from depman.server.state import client_address, server_state

COOKIE_NAME = "depman_session"
SESSION_SECONDS = 12 * 3600
# `<expires>.<64 hex>`: anything longer is not a cookie this server made.
MAX_COOKIE_CHARS = 100
MAX_EXPIRES_DIGITS = 12
_CONTEXT = b"depman-dashboard-session-v1:"


class LoginRequired(Exception):
    """Raised by the page dependencies; `mount` turns it into a redirect or a 401."""

    def __init__(self, fragment: bool) -> None:
        super().__init__("dashboard login required")
        self.fragment = fragment


def admin_token(request: Request) -> str | None:
    """The configured admin token, or None when the dashboard is closed."""
    secret = server_state(request).settings.admin_token
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def token_matches(given: str, token: str | None) -> bool:
    """Constant-time comparison; no token configured matches nothing."""
    if not token or not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def _signature(token: str, expires: int) -> str:
    return hmac.new(token.encode(), _CONTEXT + str(expires).encode(), hashlib.sha256).hexdigest()


def make_session(token: str, now: float | None = None) -> str:
    """A cookie value valid for SESSION_SECONDS."""
    expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
    return f"{expires}.{_signature(token, expires)}"


def session_expiry(value: str | None) -> int | None:
    """The expiry a cookie claims, if it is shaped like one this server makes."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    expires_text, _, signature = value.partition(".")
    if not signature or not (
        expires_text.isascii()
        and expires_text.isdigit()
        and len(expires_text) <= MAX_EXPIRES_DIGITS
    ):
        return None
    return int(expires_text)


def session_valid(value: str | None, token: str | None, now: float | None = None) -> bool:
    """The cookie was made with this token and has not expired (revocation aside)."""
    expires = session_expiry(value)
    if expires is None or not token or value is None:
        return False
    signature = value.partition(".")[2]
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, expires).encode())


def is_authenticated(request: Request) -> bool:
    """A valid session cookie or `Authorization: Bearer <admin token>`."""
    token = admin_token(request)
    if token is None:
        return False
    offered = bearer_token(request.headers.get("authorization"))
    if offered is not None:
        # A bearer guess here counts (and backs off) like one on the admin API.
        state = server_state(request)
        try:
            with attempt(state, "admin", client_address(request)):
                if not token_matches(offered, token):
                    raise AuthError("wrong bearer token")
        except AuthError:
            return False
        return True
    cookie = request.cookies.get(COOKIE_NAME)
    if not session_valid(cookie, token):
        return False
    assert cookie is not None
    with server_state(request).db.read_session() as session:
        return not is_revoked(cookie, session=session)


def require_page(request: Request) -> None:
    """Dependency of the HTML pages: anonymous visitors go to /login."""
    if not is_authenticated(request):
        raise LoginRequired(fragment=False)


def require_fragment(request: Request) -> None:
    """Dependency of the refresh fragments: anonymous callers get 401."""
    if not is_authenticated(request):
        raise LoginRequired(fragment=True)


def safe_next(target: str | None) -> str:
    """Only same-site paths after login: never `//host` or `https://host`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
