"""The local state file: what this node holds, written atomically before it is reported."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_json

log = logging.getLogger("depman.agent")
STATE_VERSION = 1


@dataclass
class DepRecord:
    """One installed dependency."""

    dep_id: str
    kind: str
    dest_relative_path: str
    size_bytes: int
    sha256: str | None
    installed_at: float
    last_used_at: float
    # True when the sha256 was computed from the file's bytes; False for a file adopted on
    # its size alone (an operator's own file: never evicted).
    verified: bool = True
    # The receipt: the final file's identity when it was verified (see receipts.py).
    mtime_ns: int | None = None
    inode: int | None = None
    verified_at_ms: int | None = None
    # The extra_model_paths.yaml section the file lives in (None: the ComfyUI folder).
    root: str | None = None
    # A folder model: [{path, sizeBytes, sha256, mtimeNs, inode}] of the files inside.
    files: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        extra: dict[str, Any] = {}
        if self.root is not None:
            extra["root"] = self.root
        if self.files is not None:
            extra["files"] = self.files
        return {
            **extra,
            "depId": data["dep_id"], "kind": data["kind"],
            "destRelativePath": data["dest_relative_path"], "sizeBytes": data["size_bytes"],
            "sha256": data["sha256"], "installedAt": data["installed_at"],
            "lastUsedAt": data["last_used_at"], "verified": data["verified"],
            "mtimeNs": None if self.mtime_ns is None else str(self.mtime_ns),
            "inode": self.inode, "verifiedAtMs": self.verified_at_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DepRecord:
        return cls(dep_id=str(data["depId"]), kind=str(data["kind"]),
                   dest_relative_path=str(data["destRelativePath"]),
                   size_bytes=int(data["sizeBytes"]), sha256=data.get("sha256"),
                   installed_at=float(data.get("installedAt", 0)),
                   last_used_at=float(data.get("lastUsedAt", 0)),
                   verified=bool(data.get("verified", True)),
                   mtime_ns=_optional_int(data.get("mtimeNs")),
                   inode=_optional_int(data.get("inode")),
                   verified_at_ms=_optional_int(data.get("verifiedAtMs")),
                   root=data.get("root") if isinstance(data.get("root"), str) else None,
                   files=data.get("files") if isinstance(data.get("files"), list) else None)


def _optional_int(value: Any) -> int | None:
    """An int from the state file (mtimeNs is kept as a string, like on the wire)."""
    if value is None or isinstance(value, bool):
        return None
    return int(value)


@dataclass
class AgentState:
    deps: dict[str, DepRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # depId -> last error
    # Download items started but not finished: resumed after a restart.
    inflight: dict[str, dict[str, Any]] = field(default_factory=dict)
    instance_id: str | None = None


class StateStore:
    """Loads and saves ``AgentState`` at ``path`` (temp + fsync + os.replace)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("State file %s unreadable (%s); starting empty, old copy kept at %s",
                        self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return AgentState()
        state = AgentState(instance_id=raw.get("instanceId"))
        for entry in raw.get("deps", {}).values():
            try:
                record = DepRecord.from_json(entry)
            except (KeyError, TypeError, ValueError):
                continue
            state.deps[record.dep_id] = record
        state.failed = {str(k): str(v) for k, v in raw.get("failed", {}).items()}
        state.inflight = {str(k): v for k, v in raw.get("inflight", {}).items()
                          if isinstance(v, dict)}
        return state

    def save(self, state: AgentState) -> None:
        atomic_write_json(self.path, {
            "version": STATE_VERSION,
            "instanceId": state.instance_id,
            "deps": {dep_id: r.to_json() for dep_id, r in sorted(state.deps.items())},
            "failed": state.failed,
            "inflight": state.inflight,
        })
