"""The few control-plane calls the demo makes (admin token), over one httpx client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

JsonDoc = dict[str, Any]
REQUEST_TIMEOUT = 15.0
WAIT_MARGIN_SECONDS = 10.0


class DemoApiError(RuntimeError):
    """The control plane answered an error (or could not be reached)."""


class DemoApi:
    """Admin and job calls; thread-safe (httpx.Client is)."""

    def __init__(self, root_url: str, admin_token: str) -> None:
        self.root_url = root_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.root_url + "/api",
            headers={"Authorization": f"Bearer {admin_token}", "Accept": "application/json"},
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        )

    def close(self) -> None:
        self._http.close()

    def put(self, path: str, body: Mapping[str, Any]) -> JsonDoc:
        """PUT an admin document (`path` relative to /api)."""
        return self._request("PUT", path, json=dict(body))

    def apply_fleet(self, fleet: Mapping[str, Any]) -> JsonDoc:
        """`POST /admin/fleet`: the whole fleet document in one transaction."""
        return self._request("POST", "/admin/fleet", json=dict(fleet))

    def list_instances(self) -> list[JsonDoc]:
        """Every instance with its `dependencyManager` object."""
        return _items(self._request("GET", "/admin/instances"), "instances")

    def get_instance(self, instance_id: str) -> JsonDoc:
        return self._request("GET", f"/admin/instances/{quote(instance_id, safe='')}")

    def list_jobs(self) -> list[JsonDoc]:
        return _items(self._request("GET", "/jobs"), "jobs")

    def submit_job(
        self, server_type: str, dep_ids: Sequence[str], job_id: str | None = None
    ) -> JsonDoc:
        body: JsonDoc = {"serverType": server_type, "depIds": list(dep_ids)}
        if job_id:
            body["jobId"] = job_id
        return self._request("POST", "/jobs", json=body)

    def get_job(
        self, job_id: str, wait_seconds: int = 0, seen_state: str | None = None
    ) -> JsonDoc:
        """One job; with `wait_seconds`, the server answers once its state differs from
        `seen_state` (default: its state when the request arrives)."""
        params: dict[str, Any] = {}
        if wait_seconds:
            params["waitSeconds"] = wait_seconds
            if seen_state:
                params["seenState"] = seen_state
        return self._request(
            "GET",
            f"/jobs/{quote(job_id, safe='')}",
            params=params,
            timeout=REQUEST_TIMEOUT + wait_seconds + WAIT_MARGIN_SECONDS,
        )

    def start_job(self, job_id: str) -> JsonDoc:
        return self._request("POST", f"/jobs/{quote(job_id, safe='')}/start", json={})

    def complete_job(self, job_id: str, ok: bool = True, error: str | None = None) -> JsonDoc:
        body: JsonDoc = {"ok": ok}
        if error:
            body["error"] = error
        return self._request("POST", f"/jobs/{quote(job_id, safe='')}/complete", json=body)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                timeout=timeout if timeout is not None else REQUEST_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise DemoApiError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise DemoApiError(
                f"{method} {path}: {response.status_code} {response.text[:300]}"
            )
        return response.json() if response.content else {}


def _items(answer: Any, key: str) -> list[JsonDoc]:
    """A list answer, bare or wrapped in `{key: [...]}` / `{"items": [...]}`."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for name in (key, "items"):
            if isinstance(answer.get(name), list):
                return list(answer[name])
    return []
