"""JSON documents of the API (camelCase, protocol field names) built from rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from depman.core import dep_sources
from depman.core.clock import isoformat
from depman.core.dep_holders import DepLocation
from depman.core.queue import format_item_id
from depman.core.upstream import waiting_for_upstream
from depman.store.models import Dep, DepReceipt, Instance, Job, Profile, QueueItem, ServerType


def dep_document(dep: Dep) -> dict[str, Any]:
    """A catalog entry as the admin API shows it."""
    return {
        "depId": dep.dep_id,
        "url": dep.url,
        "auth": dep.auth,
        "destRelativePath": dep.dest_relative_path,
        "sha256": dep.sha256,
        "expectedSizeBytes": dep.expected_size_bytes,
        "kind": dep.kind,
        "type": dep.model_type,
        "filename": dep.filename,
        "root": dep.root,
        "source": dep.source,
        "revision": dep.revision,
        "files": list(dep.files) if dep.files is not None else None,
        "sources": [s.written for s in dep_sources.stored(dep.sources)],
        "resolvedSources": [s.document() for s in dep_sources.stored(dep.sources)],
        "updatedAt": isoformat(dep.updated_at),
    }


def profile_document(profile: Profile, static_dep_ids: list[str]) -> dict[str, Any]:
    """A profile as the admin API and register show it."""
    return {
        "profileId": profile.profile_id,
        "staticDepIds": static_dep_ids,
        "prefetchOnBoot": profile.prefetch_on_boot,
        "dynamicPolicy": dict(profile.dynamic_policy or {}),
        "root": profile.root,
        "updatedAt": isoformat(profile.updated_at),
    }


def location_document(row: DepLocation) -> dict[str, Any]:
    """An instance holding a dep (or downloading it) as the admin API shows it."""
    return {
        "instanceId": row.instance_id,
        "serverType": row.server_type,
        "instanceStatus": row.instance_status,
        "state": row.state,
        "kind": row.kind,
        "since": isoformat(row.since),
        "receipt": row.receipt,
        "error": row.error,
    }


def server_type_document(row: ServerType) -> dict[str, Any]:
    """A server type as the admin API shows it."""
    return {
        "serverType": row.server_type,
        "modelManagement": {
            "mode": row.mode,
            "profileId": row.profile_id,
            "enrollment": row.enrollment or "open",
        },
        "maxActiveJobs": row.max_active_jobs,
        "updatedAt": isoformat(row.updated_at),
    }


def receipt_document(receipt: DepReceipt) -> dict[str, Any]:
    """A verification receipt as the admin API shows it (the agent's names)."""
    return {
        "depId": receipt.dep_id,
        "algorithm": receipt.algorithm,
        "sha256": receipt.sha256,
        "sizeBytes": receipt.size_bytes,
        "mtimeNs": str(receipt.mtime_ns) if receipt.mtime_ns is not None else None,
        "verifiedAt": isoformat(receipt.verified_at),
        "destRelativePath": receipt.dest_relative_path,
        "finalPathVerified": receipt.final_path_verified,
        "agentVersion": receipt.agent_version,
        "itemId": receipt.item_id,
        "matchesCatalog": receipt.matches_catalog,
        "receivedAt": isoformat(receipt.received_at),
    }


def instance_document(
    row: Instance,
    held: dict[str, str],
    *,
    now: datetime,
    live_ttl_seconds: float,
    receipts: list[DepReceipt] | None = None,
) -> dict[str, Any]:
    """An instance with its `dependencyManager` inventory, heartbeat age and liveness.

    `receipts`: shown for one instance (the list of all instances leaves them out).
    """
    age = (now - row.last_heartbeat_at).total_seconds() if row.last_heartbeat_at else None
    manager: dict[str, Any] = {}
    if receipts is not None:
        manager["receipts"] = [receipt_document(r) for r in receipts]
    return {
        "instanceId": row.instance_id,
        "ip": row.ip,
        "serverType": row.server_type,
        "live": row.lost_at is None and age is not None and age <= live_ttl_seconds,
        "lost": row.lost_at is not None,
        "lostAt": isoformat(row.lost_at),
        "heartbeatAgeSeconds": round(age, 3) if age is not None else None,
        "registeredAt": isoformat(row.registered_at),
        "drained": bool(row.drained),
        "provider": row.provider,
        "providerMetadata": row.provider_metadata,
        "sourceBytes": {"mirror": row.mirror_bytes or 0, "upstream": row.upstream_bytes or 0},
        "dependencyManager": {
            "lastHeartbeatAt": isoformat(row.last_heartbeat_at),
            "installedDepIdsStatic": sorted(d for d, k in held.items() if k == "static"),
            "installedDepIdsDynamic": sorted(d for d, k in held.items() if k != "static"),
            "downloadingDepIds": list(row.downloading_dep_ids or []),
            "failedDepIds": list(row.failed_dep_ids or []),
            "diskStats": {
                "totalBytes": row.disk_total_bytes,
                "freeBytes": row.disk_free_bytes,
                "usedBytes": row.disk_used_bytes,
                "path": row.disk_stats_path,
            },
            "diskDiagnostics": row.disk_diagnostics,
            "dynamicBytesUsed": row.dynamic_bytes_used,
            "queueDepth": row.queue_depth,
            "agentVersion": row.agent_version,
            "activeDownloads": list(row.active_downloads or []),
            "pinnedDepIds": list(row.pinned_dep_ids or []),
            **manager,
        },
    }


def queue_item_document(item: QueueItem) -> dict[str, Any]:
    """A queue item as the admin API shows it."""
    return {
        "itemId": format_item_id(item.dep_id, item.generation),
        "depId": item.dep_id,
        "op": item.op,
        "state": item.state,
        "attempts": item.attempts,
        "error": item.error,
        "priority": item.priority,
        "generation": item.generation,
        "failures": item.failures or 0,
        "enqueuedAt": isoformat(item.enqueued_at),
        "startedAt": isoformat(item.started_at),
        "finishedAt": isoformat(item.finished_at),
        "updatedAt": isoformat(item.updated_at),
        "nextAttemptAt": isoformat(item.next_attempt_at),
        "firstFailedAt": isoformat(item.first_failed_at),
        "cancelReason": item.cancel_reason,
        "forceRetry": bool(item.force_retry),
        "forceRetryAfterMs": item.force_retry_after_ms,
        "waitingForUpstream": waiting_for_upstream(item),
    }


def job_document(job: Job, dep_ids: list[str], missing: list[str]) -> dict[str, Any]:
    """A job with its reservation, missing deps and history."""
    return {
        "jobId": job.job_id,
        "serverType": job.server_type,
        "state": job.state,
        "instanceId": job.instance_id,
        "depIds": dep_ids,
        "missingDepIds": missing,
        "error": job.error,
        "placements": job.placements,
        "history": list(job.history or []),
        "createdAt": isoformat(job.created_at),
        "placedAt": isoformat(job.placed_at),
        "readyAt": isoformat(job.ready_at),
        "startedAt": isoformat(job.started_at),
        "finishedAt": isoformat(job.finished_at),
        "sourceBytes": {"mirror": job.mirror_bytes or 0, "upstream": job.upstream_bytes or 0},
    }
