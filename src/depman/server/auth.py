"""Credentials: the fleet secret, agent tokens, admin and submit tokens (all constant time)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy.orm import Session

from depman.core.instances import hash_token, stored_token_hash, verify_token
from depman.errors import AuthError, MissingCredentials
from depman.server.state import ServerState

# The credential kinds of the `admin` realm, which the admin and job APIs share.
ADMIN_TOKEN = "admin_token"
SUBMIT_TOKEN = "submit_token"


@dataclass
class Attempt:
    """One credential check; the check sets `kind` to what the caller proved to hold."""

    kind: str | None


@contextmanager
def attempt(
    state: ServerState, realm: str, client: str, kinds: Sequence[str] | None = None
) -> Iterator[Attempt]:
    """Around a credential check: refused while the client backs off, failures recorded.

    `kinds` are the credentials the request accepts (by default one, named after
    the realm); a failure counts against each, a success clears only `Attempt.kind`.
    See `server/auth_failures.py`: 429 after repeated failures; logged without the
    offered secret; counted in /metrics.
    """
    accepted = tuple(kinds) if kinds else (realm,)
    failures = state.auth_failures
    failures.check(realm, client, accepted)
    outcome = Attempt(kind=accepted[0] if len(accepted) == 1 else None)
    try:
        yield outcome
    except MissingCredentials:
        raise
    except AuthError as exc:
        failures.failed(realm, client, exc.message, accepted)
        raise
    if outcome.kind is not None:
        failures.succeeded(realm, client, outcome.kind)


def same_secret(given: str | None, expected: SecretStr) -> bool:
    """Constant-time comparison of a presented secret with the configured one."""
    return hmac.compare_digest((given or "").encode(), expected.get_secret_value().encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def holds_operator_token(state: ServerState, authorization: str | None) -> bool:
    """Whether an `Authorization` header carries the admin or the submit token."""
    token = bearer_token(authorization)
    if not token:
        return False
    settings = state.settings
    return any(
        secret is not None and secret.get_secret_value() and same_secret(token, secret)
        for secret in (settings.admin_token, settings.submit_token)
    )


def check_shared_secret(state: ServerState, given: str | None) -> None:
    """Register's X-DM-Secret: checked only when the server has a secret."""
    expected = state.settings.shared_secret
    if expected is not None and expected.get_secret_value() and not same_secret(given, expected):
        raise AuthError("missing or wrong X-DM-Secret")


def check_agent(
    state: ServerState, instance_id: str, token: str | None, *, session: Session
) -> None:
    """The bearer token must be `instance_id`'s agent token."""
    if not token:
        raise MissingCredentials("missing agent token: register first")
    digest = hash_token(token)
    hints = state.cache.memos
    if hints.token_matches(instance_id, digest):
        return
    seen = hints.epoch(instance_id)
    stored = stored_token_hash(instance_id, session=session)
    verify_token(instance_id, token, stored, session=session)
    hints.remember_token(instance_id, digest, seen)


def check_admin(state: ServerState, token: str | None, *, allow_submit: bool = False) -> str:
    """The admin token (or, where allowed, the submit token); answers the kind that matched."""
    settings = state.settings
    if settings.admin_token is None and (not allow_submit or settings.submit_token is None):
        raise MissingCredentials("the server has no DEPMAN_ADMIN_TOKEN configured")
    if not token:
        raise MissingCredentials("missing bearer token")
    if settings.admin_token is not None and same_secret(token, settings.admin_token):
        return ADMIN_TOKEN
    if (
        allow_submit
        and settings.submit_token is not None
        and same_secret(token, settings.submit_token)
    ):
        return SUBMIT_TOKEN
    raise AuthError("wrong bearer token")
