"""Auth when the server has no admin token or no shared secret (in-process app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from depman.server.app import create_app
from depman.settings import ServerSettings
from depman.store.migrate import upgrade


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(url)
    with TestClient(create_app(ServerSettings(database_url=url))) as test_client:
        yield test_client


def test_without_admin_token_admin_and_jobs_are_refused(client: TestClient) -> None:
    for path in ("/api/admin/deps", "/api/jobs"):
        answer = client.get(path, headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 401
        assert "DEPMAN_ADMIN_TOKEN" in answer.json()["error"]["message"]


def test_without_shared_secret_register_is_not_checked(client: TestClient) -> None:
    body = {"serverType": "s", "agentVersion": "v", "instanceId": "x"}
    answer = client.post("/api/dependencies/register", json=body)
    # Past the secret check: the server type does not exist.
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "unknown_server_type"
