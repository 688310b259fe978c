"""`AdminClient`: typed calls to the control plane's admin and job API over httpx.

Every HTTP or transport failure leaves this module as a `ClientError` carrying
the server's `{"error": {"code", "message"}}` message.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from depman.client.errors import AuthFailed, ClientError, Unreachable

JsonDoc = dict[str, Any]
DEFAULT_TIMEOUT = 30.0
# Long-poll reads hold the request this long at most; the read timeout adds a margin.
MAX_WAIT_SECONDS = 30.0
WAIT_MARGIN_SECONDS = 15.0
# Path segment of each fleet section in the admin API.
SECTION_PATHS = {
    "deps": "deps",
    "profiles": "profiles",
    "serverTypes": "server-types",
    "instances": "instances",
}


def root_url(url: str) -> str:
    """The control plane's root URL; tolerates a trailing `/` or the agents' `/api` suffix."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/api")


class AdminClient:
    """The admin and job API of one control plane, authenticated with the admin token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        actor: str | None = None,
    ) -> None:
        self.base_url = root_url(base_url)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if actor:
            headers["X-Depman-Actor"] = actor  # who acts, for the server's audit log
        self._http = httpx.Client(
            base_url=self.base_url + "/api",
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # Admin documents -------------------------------------------------------

    def put_document(self, section: str, doc_id: str, body: JsonDoc) -> JsonDoc:
        """Create or replace one admin document; `section` as in fleet files (`serverTypes`)."""
        return self._request("PUT", self._doc_path(section, doc_id), json=body)

    def get_document(self, section: str, doc_id: str) -> JsonDoc | None:
        """One admin document, or None when it does not exist."""
        try:
            return self._request("GET", self._doc_path(section, doc_id))
        except ClientError as exc:
            if exc.status == 404:
                return None
            raise

    def put_dep(self, dep_id: str, body: JsonDoc) -> JsonDoc:
        """Create or replace a catalog entry."""
        return self.put_document("deps", dep_id, body)

    def put_profile(self, profile_id: str, body: JsonDoc) -> JsonDoc:
        """Create or replace a dependency profile."""
        return self.put_document("profiles", profile_id, body)

    def put_server_type(self, server_type: str, body: JsonDoc) -> JsonDoc:
        """Create or replace a server type."""
        return self.put_document("serverTypes", server_type, body)

    def put_instance(self, instance_id: str, body: JsonDoc) -> JsonDoc:
        """Create or replace an instance record."""
        return self.put_document("instances", instance_id, body)

    def get_instance(self, instance_id: str) -> JsonDoc | None:
        """One instance with its `dependencyManager` object, or None."""
        return self.get_document("instances", instance_id)

    def apply_fleet(self, body: JsonDoc) -> JsonDoc:
        """Upsert deps, profiles, server types and instances in one transaction."""
        return self._request("POST", "/admin/fleet", json=body)

    # Listings --------------------------------------------------------------

    def list_instances(self) -> list[JsonDoc]:
        """Every instance with its `dependencyManager` object."""
        return _items(self._request("GET", "/admin/instances"), "instances")

    def list_deps(self) -> list[JsonDoc]:
        """The dependency catalog."""
        return _items(self._request("GET", "/admin/deps"), "deps")

    def dep_locations(self, dep_id: str) -> list[JsonDoc]:
        """The instances holding a dep or downloading it, with the file's state there."""
        path = f"/admin/deps/{_segment(dep_id)}/instances"
        return _items(self._request("GET", path), "instances")

    def list_server_types(self) -> list[JsonDoc]:
        """Every server type."""
        return _items(self._request("GET", "/admin/server-types"), "serverTypes")

    def list_queue_items(self, instance_id: str) -> list[JsonDoc]:
        """The queue items of one instance."""
        path = f"/admin/queues/{_segment(instance_id)}/items"
        return _items(self._request("GET", path), "items")

    # Jobs ------------------------------------------------------------------

    def submit_job(
        self,
        server_type: str,
        dep_ids: list[str],
        *,
        job_id: str | None = None,
        workflow: JsonDoc | None = None,
    ) -> JsonDoc:
        """Submit a job; answers `{"jobId", "instanceId", "state", "missingDepIds"}`."""
        body: JsonDoc = {"serverType": server_type, "depIds": dep_ids}
        if job_id is not None:
            body["jobId"] = job_id
        if workflow is not None:
            body["workflow"] = workflow
        return self._request("POST", "/jobs", json=body)

    # Workflows -------------------------------------------------------------

    def workflow_deps(self, workflow: JsonDoc) -> JsonDoc:
        """The workflow's models matched against the catalog."""
        return self._request("POST", "/admin/workflows/deps", json={"workflow": workflow})

    def import_workflow(self, workflow: JsonDoc, *, kind: str, auth: str) -> JsonDoc:
        """Add catalog entries for the workflow's unknown models that carry a url."""
        body = {"workflow": workflow, "kind": kind, "auth": auth}
        return self._request("POST", "/admin/workflows/import", json=body)

    def list_jobs(
        self, *, state: str | None = None, instance_id: str | None = None
    ) -> list[JsonDoc]:
        """Jobs, optionally only those in `state` or on `instance_id`."""
        params = {k: v for k, v in (("state", state), ("instanceId", instance_id)) if v}
        return _items(self._request("GET", "/jobs", params=params), "jobs")

    def get_job(
        self, job_id: str, *, wait_seconds: float | None = None, seen_state: str | None = None
    ) -> JsonDoc:
        """One job; with `wait_seconds` the server answers once its state is not `seen_state`."""
        params: dict[str, Any] = {}
        timeout: float | None = None
        if wait_seconds:
            wait_seconds = min(wait_seconds, MAX_WAIT_SECONDS)
            params["waitSeconds"] = int(wait_seconds)
            timeout = wait_seconds + WAIT_MARGIN_SECONDS
            if seen_state:
                # Without it the server waits for a change from whatever state is current
                # then, and a change between two polls would go unnoticed for a whole wait.
                params["seenState"] = seen_state
        return self._request("GET", f"/jobs/{_segment(job_id)}", params=params, timeout=timeout)

    def start_job(self, job_id: str) -> JsonDoc:
        """Mark a ready job running (the job runner calls this)."""
        return self._request("POST", f"/jobs/{_segment(job_id)}/start", json={})

    def complete_job(self, job_id: str, *, ok: bool = True, error: str | None = None) -> JsonDoc:
        """Finish a job and release its reservation."""
        body: JsonDoc = {"ok": ok}
        if error:
            body["error"] = error
        return self._request("POST", f"/jobs/{_segment(job_id)}/complete", json=body)

    # Operator actions ----------------------------------------------------------

    def act(self, path: str, body: JsonDoc) -> JsonDoc:
        """POST an operator action (`/admin/...`); answers the changed document."""
        result: JsonDoc = self._request("POST", path, json=body)
        return result

    def list_actions(
        self, *, instance_id: str | None = None, job_id: str | None = None, limit: int = 100
    ) -> list[JsonDoc]:
        """The audit log, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if instance_id:
            params["instanceId"] = instance_id
        if job_id:
            params["jobId"] = job_id
        return _items(self._request("GET", "/admin/actions", params=params), "actions")

    # Plumbing --------------------------------------------------------------

    # Agent builds ------------------------------------------------------------

    def publish_agent_build(
        self, server_type: str, data: bytes, *, version: str | None, rollout_percent: int
    ) -> JsonDoc:
        """Publish an agent file for a server type (replaces its build)."""
        params: dict[str, Any] = {"rolloutPercent": rollout_percent}
        if version:
            params["version"] = version
        path = f"/admin/agent-builds/{_segment(server_type)}"
        return self._request("PUT", path, params=params, content=data)

    def list_agent_builds(self) -> list[JsonDoc]:
        """Every published agent build."""
        return _items(self._request("GET", "/admin/agent-builds"), "builds")

    def set_agent_rollout(self, server_type: str, percent: int) -> JsonDoc:
        """Change the rollout percentage of a published build."""
        path = f"/admin/agent-builds/{_segment(server_type)}"
        return self._request("PATCH", path, json={"rolloutPercent": percent})

    def unpublish_agent_build(self, server_type: str) -> None:
        """Stop offering a server type's build."""
        self._request("DELETE", f"/admin/agent-builds/{_segment(server_type)}")

    def _doc_path(self, section: str, doc_id: str) -> str:
        return f"/admin/{SECTION_PATHS[section]}/{_segment(doc_id)}"

    # The fleet mirror ------------------------------------------------------

    def mirror_status(self) -> JsonDoc:
        """The mirror's settings, totals and every catalog entry's state in it."""
        return dict(self._request("GET", "/admin/mirror"))

    def mirror_fill(self, dep_ids: list[str] | None) -> JsonDoc:
        """Ask the server to fill these deps now (None: every catalog entry)."""
        return dict(self._request("POST", "/admin/mirror/fill", json={"depIds": dep_ids}))

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        content: bytes | None = None,
    ) -> Any:
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if content is not None:
            extra.update(content=content, headers={"Content-Type": "application/octet-stream"})
        try:
            response = self._http.request(method, path, json=json, params=params, **extra)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{self.base_url} did not answer {method} {path} in time") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the depman server at {self.base_url}: {exc}") from exc
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise _error_of(response, method, path) from exc
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(
                f"{method} {path}: answer {response.status_code} is not JSON",
                code="bad_response",
                status=response.status_code,
            ) from exc


def _segment(value: str) -> str:
    """One URL path segment: ids never turn into extra path levels."""
    return quote(value, safe="")


def _items(answer: Any, key: str) -> list[JsonDoc]:
    """A list answer, bare (`[...]`) or wrapped (`{"<key>": [...]}`, `{"items": [...]}`)."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for name in (key, "items"):
            if isinstance(answer.get(name), list):
                return list(answer[name])
    raise ClientError(f"unexpected answer for a list of {key}", code="bad_response")


def _error_of(response: httpx.Response, method: str, path: str) -> ClientError:
    """The ClientError for an error answer, with the server's code and message when it sent one."""
    status = response.status_code
    code, message = f"http_{status}", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or "")
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    if not message:
        message = response.reason_phrase or f"HTTP {status}"
    text = f"{message} ({method} {path}: {status} {code})"
    if status == 401:
        return AuthFailed(
            f"{text}\nthe admin token was refused: check --token or DEPMAN_ADMIN_TOKEN",
            code=code,
            status=status,
        )
    if status == 403:
        return AuthFailed(f"{text}\nthis token may not do that", code=code, status=status)
    return ClientError(text, code=code, status=status)
