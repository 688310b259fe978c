"""Checking what the control plane sends before the agent acts on it.

Nothing in an answer may stop the agent: a list that is not a list counts as
empty, a malformed item is set aside with the reason (the loop reports it
``failed``) and the rest of the answer is used, a policy value of the wrong
type falls back to its default. Each problem is logged once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .logonce import problems

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_KINDS = {k.value for k in p.DepKind}
_AUTHS = {a.value for a in p.AuthKind}
# dynamicPolicy keys and the check each value must pass.
_POLICY_KEYS: dict[str, str] = {
    "enabled": "bool", "minFreeBytes": "size", "maxDynamicBytes": "size",
    "evictionBatchMax": "count", "pinTtlSeconds": "size",
}


@dataclass(frozen=True)
class QueueAnswer:
    items: list[dict[str, Any]]
    pinned: set[str] | None  # None: the server did not send pinnedDepIds
    # Items with ids that cannot be run, and why: reported failed by the loop.
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    static_ids: set[str] | None = None  # None: the server did not send staticDepIds


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def item_problem(item: Mapping[str, Any]) -> str | None:
    """Why ``item`` cannot be run as sent, or None when its fields have usable types."""
    resolved = item.get("resolved")
    if resolved is None:
        return None if item.get("op") != p.Op.DOWNLOAD.value else "download item without resolved"
    if not isinstance(resolved, dict):
        return f"resolved is not an object ({type(resolved).__name__})"
    checks = (
        ("url", lambda v: isinstance(v, str), "a string"),
        ("destRelativePath", lambda v: isinstance(v, str) and v, "a non-empty string"),
        ("sha256", lambda v: isinstance(v, str) and _SHA256.match(v), "64 hex digits"),
        ("expectedSizeBytes", lambda v: is_int(v) and v >= 0, "a non-negative integer"),
        ("kind", lambda v: v in _KINDS, "static or dynamic"),
        ("auth", lambda v: v in _AUTHS, "none, hf_token or civitai_token"),
    )
    for key, ok, wanted in checks:
        value = resolved.get(key)
        if value not in (None, "") and not ok(value):
            return f"resolved.{key} must be {wanted}, got {value!r:.80}"
    return None


def parse_queue(data: Mapping[str, Any]) -> QueueAnswer:
    raw = data.get("items")
    if raw is None or not isinstance(raw, list):
        if "items" in data or raw is not None:
            problems.warn("queue answer items", "Queue answer has items=%.80r, not a list; "
                          "treating it as empty", raw)
        raw = []
    else:
        problems.ok("queue answer items")
    items: list[dict[str, Any]] = []
    rejected: list[tuple[dict[str, Any], str]] = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("itemId"), str) \
                or not isinstance(entry.get("depId"), str):
            problems.warn("queue item without ids", "Queue answer holds an entry without "
                          "string itemId and depId (%.120r); skipping it", entry)
            continue
        reason = item_problem(entry)
        if reason is None:
            items.append(entry)
        else:
            rejected.append((entry, f"local error: Malformed queue item: {reason}"))
    return QueueAnswer(items, pinned_of(data), rejected, static_dep_ids(data))


def static_dep_ids(data: Mapping[str, Any]) -> set[str] | None:
    """``staticDepIds`` (the profile's static deps now), None when absent or malformed."""
    ids = data.get("staticDepIds")
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        return None
    return set(ids)


def pinned_of(data: Mapping[str, Any]) -> set[str] | None:
    pinned = data.get("pinnedDepIds")
    if pinned is None:
        return None
    if not isinstance(pinned, list):
        problems.warn("pinnedDepIds", "pinnedDepIds is not a list (%.80r); ignoring it", pinned)
        return None
    return {d for d in pinned if isinstance(d, str)}


def sanitize_policy(policy: object) -> dict[str, Any]:
    """``profile.dynamicPolicy`` with every value of the wrong type dropped (default used)."""
    if policy is None:
        return {}
    if not isinstance(policy, dict):
        problems.warn("dynamicPolicy", "profile.dynamicPolicy is not an object (%.80r); "
                      "using the defaults", policy)
        return {}
    clean: dict[str, Any] = {}
    for key, value in policy.items():
        kind = _POLICY_KEYS.get(key)
        if value is None or kind is None:
            continue
        good = (isinstance(value, bool) if kind == "bool"
                else is_int(value) and value >= (1 if kind == "count" else 0))
        if good:
            clean[key] = value
        else:
            problems.warn(f"dynamicPolicy.{key}", "profile.dynamicPolicy.%s=%.80r is not "
                          "usable; using the default", key, value)
    return clean
