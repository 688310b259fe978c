"""A dependency protocol v1 client written from docs/protocol-v1.md: urllib only, no depman imports.

It behaves like the field agent: register with the shared secret, heartbeat,
poll with limit=25, report running then succeeded for what it "downloads"
(here: it pretends the file arrived), and heartbeat the new inventory.

The optional arguments speak what later field agents (0.3 → 0.10,
shared/docs/field-agents.md) add: `retrying` and `cancelled` reports, the
queue-item check, failedDepIds, activeDownloads, disk diagnostics, provider.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class V1Error(Exception):
    """A non-2xx answer."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


class V1Client:
    """The four calls of protocol v1, exactly as a v1 agent sends them."""

    def __init__(
        self,
        api_base_url: str,
        server_type: str,
        shared_secret: str,
        agent_version: str = "v1-test-client",
    ) -> None:
        self.base = api_base_url.rstrip("/")
        self.agent_version = agent_version
        self.server_type = server_type
        self.secret = shared_secret
        self.instance_id = ""
        self.token = ""
        self.installed_static: list[str] = []
        self.installed_dynamic: list[str] = []

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Accept": "application/json", **headers}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise V1Error(exc.code, exc.read().decode(errors="replace")) from exc

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def register(
        self,
        instance_id: str | None = None,
        instance_ip: str | None = None,
        agent_version: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """POST /dependencies/register (`extra`: later agents' fields, e.g. provider)."""
        version = agent_version or self.agent_version
        body: dict[str, Any] = {"serverType": self.server_type, "agentVersion": version}
        body.update(extra)
        if instance_id:
            body["instanceId"] = instance_id
        if instance_ip:
            body["instanceIp"] = instance_ip
        answer = self._call("POST", "/dependencies/register", body, {"X-DM-Secret": self.secret})
        if not answer.get("instanceId") or not answer.get("agentToken"):
            raise ValueError("register answer without instanceId/agentToken")
        self.instance_id, self.token = answer["instanceId"], answer["agentToken"]
        return answer

    def disk(self) -> dict[str, int]:
        """Fixed disk figures."""
        return {"totalBytes": 100 * 2**30, "freeBytes": 60 * 2**30, "usedBytes": 40 * 2**30}

    def heartbeat(
        self,
        downloading: list[str] | None = None,
        failed: list[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """POST /dependencies/heartbeat (`extra`: e.g. activeDownloads, diskDiagnostics)."""
        body: dict[str, Any] = {
            "instanceId": self.instance_id,
            "installedStaticDepIds": self.installed_static,
            "installedDynamicDepIds": self.installed_dynamic,
            "downloadingDepIds": downloading or [],
            "failedDepIds": failed or [],
            "diskStats": self.disk(),
            "dynamicBytesUsed": 0,
            "queueDepth": 0,
        }
        body.update(extra)
        result: dict[str, Any] = self._call("POST", "/dependencies/heartbeat", body, self._auth())
        return result

    def poll(self) -> list[dict[str, Any]]:
        """GET /dependencies/queue?instanceId=…&limit=25."""
        answer = self._call(
            "GET", f"/dependencies/queue?instanceId={self.instance_id}&limit=25", None, self._auth()
        )
        items: list[dict[str, Any]] = answer["items"]
        return items

    def status(self, item: dict[str, Any], state: str, error: str | None = None) -> dict[str, Any]:
        """POST /dependencies/status."""
        body: dict[str, Any] = {
            "instanceId": self.instance_id,
            "itemId": item["itemId"],
            "depId": item["depId"],
            "op": item["op"],
            "state": state,
            "diskStats": self.disk(),
            "dynamicBytesUsed": 0,
        }
        if error:
            body["error"] = error[:500]
        result: dict[str, Any] = self._call("POST", "/dependencies/status", body, self._auth())
        return result

    def queue_item(self, item_id: str) -> dict[str, Any]:
        """GET /dependencies/queue-item (0.9.14): the item, or V1Error 404 `exists: false`."""
        path = f"/dependencies/queue-item?instanceId={self.instance_id}&itemId={item_id}"
        result: dict[str, Any] = self._call("GET", path, None, self._auth())
        return result

    def run_once(self) -> list[str]:
        """One cycle: poll, 'download' every item, report, heartbeat; answers the dep ids done."""
        done = []
        for item in self.poll():
            self.status(item, "running")
            if item["op"] not in ("download", "touch"):
                self.status(item, "failed", f"Unknown op: {item['op']}")
                continue
            kind = item["resolved"]["kind"]
            target = self.installed_static if kind == "static" else self.installed_dynamic
            if item["depId"] not in target:
                target.append(item["depId"])
            self.status(item, "succeeded")
            done.append(item["depId"])
        self.heartbeat()
        return done
