"""Dashboard access: the admin token, as a bearer header or a signed session cookie.

The cookie never holds the token: it holds `<expires>.<session id>.<signature>`,
the signature an HMAC of the expiry and the id under the token, so a leaked cookie
dies at its expiry and every cookie dies when the token rotates. The id is random,
so two logins are two sessions. A cookie is read only in its one canonical
spelling (no leading zeros, lower-case hex of fixed length), and revocation and
the CSRF token are keyed on the parsed session id, never on the raw string.
Logging out records the session id as revoked in the database
(`core/sessions.py`), so every server process refuses it from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from depman.core.sessions import is_revoked
from depman.errors import AuthError
from depman.server.auth import ADMIN_TOKEN, attempt, bearer_token
from depman.server.state import client_address, server_state

COOKIE_NAME = "depman_session"
SESSION_SECONDS = 12 * 3600
# `<expires>.<32 hex>.<64 hex>`: anything longer is not a cookie this server made.
MAX_COOKIE_CHARS = 120
MAX_EXPIRES_DIGITS = 12
SESSION_ID_CHARS = 32
SIGNATURE_CHARS = 64
_HEX = frozenset("0123456789abcdef")
_CONTEXT = b"depman-dashboard-session-v2:"


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


@dataclass(frozen=True)
class SessionCookie:
    """A session cookie read in its canonical form."""

    expires: int
    session_id: str
    signature: str

    @property
    def value(self) -> str:
        """The one spelling of this cookie that the server accepts."""
        return f"{self.expires}.{self.session_id}.{self.signature}"


def _signature(token: str, expires: int, session_id: str) -> str:
    message = _CONTEXT + f"{expires}.{session_id}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def make_session(token: str, now: float | None = None) -> str:
    """A new session's cookie value, valid for SESSION_SECONDS."""
    expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
    session_id = secrets.token_hex(SESSION_ID_CHARS // 2)
    return SessionCookie(expires, session_id, _signature(token, expires, session_id)).value


def parse_session(value: str | None) -> SessionCookie | None:
    """The cookie's parts if it is spelled exactly as this server spells cookies."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    parts = value.split(".")
    if len(parts) != 3:
        return None
    expires_text, session_id, signature = parts
    if not (
        expires_text.isascii()
        and expires_text.isdigit()
        and len(expires_text) <= MAX_EXPIRES_DIGITS
        and _is_hex(session_id, SESSION_ID_CHARS)
        and _is_hex(signature, SIGNATURE_CHARS)
    ):
        return None
    parsed = SessionCookie(int(expires_text), session_id, signature)
    # "0" + cookie parses to the same expiry: only the canonical spelling is a cookie.
    return parsed if parsed.value == value else None


def verified_session(
    value: str | None, token: str | None, now: float | None = None
) -> SessionCookie | None:
    """The cookie's session if it was made with this token and has not expired."""
    parsed = parse_session(value)
    if parsed is None or not token:
        return None
    if parsed.expires < (now if now is not None else time.time()):
        return None
    expected = _signature(token, parsed.expires, parsed.session_id)
    if not hmac.compare_digest(parsed.signature.encode(), expected.encode()):
        return None
    return parsed


def session_valid(value: str | None, token: str | None, now: float | None = None) -> bool:
    """The cookie was made with this token and has not expired (revocation aside)."""
    return verified_session(value, token, now) is not None


def current_session(request: Request) -> SessionCookie | None:
    """This request's live session: signed with the admin token, unexpired, not logged out."""
    token = admin_token(request)
    found = verified_session(request.cookies.get(COOKIE_NAME), token)
    if found is None:
        return None
    with server_state(request).db.read_session() as session:
        return None if is_revoked(found.session_id, session=session) else found


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
            with attempt(state, "admin", client_address(request), (ADMIN_TOKEN,)):
                if not token_matches(offered, token):
                    raise AuthError("wrong bearer token")
        except AuthError:
            return False
        return True
    return current_session(request) is not None


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
