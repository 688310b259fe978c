"""The credential check of every agent request, done once, before any stage answers.

- An agent token is checked against this replica's memo'd hash of the instance's
  token, without the database; else in the database by `server/auth.check_agent`
  inside `server/auth.attempt` (failures logged without what was offered, counted,
  per-client records), which memos the hash for the next request. 401: no token or
  nobody's token; 403: another instance's token.
- Register's shared secret goes through `attempt` in the `register` realm, where a
  client that failed too often is answered 429 (right secret or not).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from depman.server.agent_gateway.memo import token_known
from depman.server.agent_gateway.requests import Caller
from depman.server.auth import attempt, check_agent, check_shared_secret
from depman.server.state import ServerState


async def check_agent_token(state: ServerState, caller: Caller, instance_id: str) -> None:
    """The caller's bearer token must be `instance_id`'s agent token (raises AuthError)."""
    # A memo'd hash was verified against the database, and the agent realm has no
    # backoff for `attempt` to apply: a match needs neither a thread nor a session.
    if token_known(state, instance_id, caller.token):
        return
    await run_in_threadpool(_check_in_database, state, caller, instance_id)


def _check_in_database(state: ServerState, caller: Caller, instance_id: str) -> None:
    with state.db.read_session() as session, attempt(state, "agent", caller.client):
        check_agent(state, instance_id, caller.token, session=session)


def check_register_secret(state: ServerState, caller: Caller) -> None:
    """Register's `X-DM-Secret`, when the server has one (raises AuthError or TooManyFailures)."""
    with attempt(state, "register", caller.client):
        check_shared_secret(state, caller.secret)
