"""AdminClient's error translation and request shapes, over httpx.MockTransport (pure logic)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from depman.client.api import AdminClient, root_url
from depman.client.errors import AuthFailed, ClientError, Unreachable

TOKEN = "adm-secret-token"
Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler) -> AdminClient:
    return AdminClient("http://depman.test/", TOKEN, transport=httpx.MockTransport(handler))


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://h:8787", "http://h:8787"),
        ("http://h:8787/", "http://h:8787"),
        ("http://h:8787/api", "http://h:8787"),
        (" http://h/prefix/api/ ", "http://h/prefix"),
    ],
)
def test_root_url_tolerates_api_suffix(given: str, root: str) -> None:
    assert root_url(given) == root


def test_requests_carry_token_and_escape_ids() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"jobs": []})

    with client_with(handler) as client:
        client.put_document("serverTypes", "a/b c", {"maxActiveJobs": 1})
        client.get_job("j 1", wait_seconds=99, seen_state="pending")
        client.list_jobs(state="ready", instance_id=None)
    put, get, listing = seen
    assert put.method == "PUT"
    assert put.url.raw_path == b"/api/admin/server-types/a%2Fb%20c"
    assert put.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(put.content) == {"maxActiveJobs": 1}
    assert get.url.path == "/api/jobs/j 1"
    assert dict(get.url.params) == {"waitSeconds": "30", "seenState": "pending"}
    assert dict(listing.url.params) == {"state": "ready"}


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ([{"depId": "a"}], "deps"),
        ({"deps": [{"depId": "a"}]}, "deps"),
        ({"items": [{"depId": "a"}]}, "deps"),
    ],
)
def test_lists_accept_bare_and_wrapped_answers(answer: object, key: str) -> None:
    with client_with(lambda _: httpx.Response(200, json=answer)) as client:
        assert client.list_deps() == [{"depId": "a"}]


def test_server_error_shape_becomes_client_error() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return error(422, "validation_failed", "profile p names unknown dep x")

    with client_with(handler) as client, pytest.raises(ClientError) as info:
        client.put_document("profiles", "p", {})
    exc = info.value
    assert (exc.status, exc.code) == (422, "validation_failed")
    assert exc.message.startswith("profile p names unknown dep x (PUT /admin/profiles/p: 422")
    assert isinstance(exc.__cause__, httpx.HTTPStatusError)


def test_wrong_token_says_how_to_fix_and_never_shows_it() -> None:
    with (
        client_with(lambda _: error(401, "unauthorized", "bad admin token")) as client,
        pytest.raises(AuthFailed) as info,
    ):
        client.list_instances()
    assert "bad admin token" in info.value.message
    assert "DEPMAN_ADMIN_TOKEN" in info.value.message
    assert TOKEN not in info.value.message


def test_non_json_and_fastapi_detail_errors() -> None:
    bad_gateway = httpx.Response(502, text="<html>bad gateway</html>")
    with (
        client_with(lambda _: bad_gateway) as client,
        pytest.raises(ClientError, match=r"Bad Gateway \(GET /admin/deps: 502 http_502\)"),
    ):
        client.list_deps()
    with client_with(lambda _: httpx.Response(404, json={"detail": "Not Found"})) as client:
        assert client.get_document("deps", "x") is None
        with pytest.raises(ClientError, match="Not Found") as info:
            client.apply_fleet({})
        assert info.value.status == 404


def test_non_json_success_is_an_error() -> None:
    with (
        client_with(lambda _: httpx.Response(200, text="hello")) as client,
        pytest.raises(ClientError, match="not JSON"),
    ):
        client.list_deps()


def test_unreachable_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client_with(handler) as client, pytest.raises(Unreachable) as info:
        client.list_deps()
    assert "cannot reach the depman server at http://depman.test" in info.value.message
    assert isinstance(info.value.__cause__, httpx.ConnectError)
