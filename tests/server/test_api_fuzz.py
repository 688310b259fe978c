"""Schemathesis against /openapi.json of a live server, with valid admin and agent credentials.

Every operation gets generated requests (valid and invalid) sent with the
credentials its route takes; no answer may be a 5xx or contradict the response
schema the operation declares. Kept short for CI (`DEPMAN_FUZZ_EXAMPLES`, default
4 per operation and mode); `bench/fuzz_api.py` runs the same with many more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server.fleet import Agent, make_fleet
from tests.support.server import RunningServer, postgres_database, run_server

EXAMPLES = int(os.environ.get("DEPMAN_FUZZ_EXAMPLES", "4"))
AGENT_PREFIX = "/api/dependencies/"
# Generated `waitSeconds` go up to 30: long-polls still wait, but briefly.
SERVER_ENV = {"DEPMAN_MAX_LONG_POLL_SECONDS": "0.2"}


class Target:
    """The server under test and the agent whose token agent routes carry."""

    def __init__(self, server: RunningServer, agent: Agent) -> None:
        self.server = server
        self.agent = agent

    def headers(self, path: str) -> dict[str, str]:
        """The credentials the route takes."""
        if path == AGENT_PREFIX + "register":
            return {"X-DM-Secret": self.server.shared_secret}
        if path.startswith(AGENT_PREFIX):
            return {"Authorization": f"Bearer {self.agent.token}"}
        return {"Authorization": f"Bearer {self.server.admin_token}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=SERVER_ENV, cwd=tmp) as server:
            yield _target(server)
            _no_tracebacks(server)
    else:
        with postgres_database() as url, run_server(url, extra_env=SERVER_ENV, cwd=tmp) as server:
            yield _target(server)
            _no_tracebacks(server)


def _target(server: RunningServer) -> Target:
    fleet = make_fleet(server)
    return Target(server, fleet.register(fleet.add_instance("fuzz")))


def _no_tracebacks(server: RunningServer) -> None:
    assert "Traceback" not in server.logs(), server.logs()[-5000:]


def _aim_at_the_agent(case: Any, target: Target) -> None:
    """Agent requests name the agent's own instance, so they reach past the token check."""
    instance_id = target.agent.instance_id
    if isinstance(case.query, dict) and "instanceId" in case.query:
        case.query["instanceId"] = instance_id
    if isinstance(case.body, dict) and "instanceId" in case.body:
        case.body["instanceId"] = instance_id


def _exercise(operation: Any, mode: GenerationMode, target: Target) -> None:
    path = operation.path

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if path.startswith(AGENT_PREFIX) and path != AGENT_PREFIX + "register":
            _aim_at_the_agent(case, target)
        response = case.call_and_validate(
            base_url=target.server.root_url,
            headers=target.headers(path),
            checks=[not_a_server_error, response_schema_conformance],
            timeout=60,
        )
        if path == AGENT_PREFIX + "register" and response.status_code == 200:
            target.agent.token = response.json()["agentToken"]  # the old one stopped working

    run()


def test_no_server_errors_and_answers_match_the_schema(fuzz_target: Target) -> None:
    api = schemathesis.openapi.from_url(fuzz_target.server.root_url + "/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _exercise(operation, mode, fuzz_target)
            except Unsatisfiable:
                pass  # no parameters or body: nothing invalid to send
            except Exception as exc:  # collected: one report naming every failing operation
                name = f"{operation.method.upper()} {operation.path} ({mode.value})"
                failures.append(f"{name}: {exc}")
    assert not failures, "\n\n".join(failures)
