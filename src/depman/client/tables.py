"""Rich tables for `depman get`: instances, deps, jobs, queue items.

They read the admin API's JSON leniently: a field the server leaves out shows
as `-`, never as a traceback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from rich.table import Table
from rich.text import Text

from depman.ages import format_age
from depman.client.units import age_since, format_bytes, parse_timestamp

JsonDoc = dict[str, Any]
BAR_WIDTH = 10
ERROR_WIDTH = 60
SHA_SHOWN = 12
STATE_STYLES = {
    "queued": "cyan",
    "pending": "cyan",
    "running": "yellow",
    "waiting_deps": "yellow",
    "ready": "green",
    "succeeded": "green",
    "completed": "green",
    "failed": "bold red",
}
LIVENESS_LABELS = {
    "live": ("live", "green"),
    "stale": ("stale", "bold red"),
    "never": ("never seen", "dim"),
    "lost": ("lost", "bold red"),
}


def instances_table(instances: list[JsonDoc], *, now: datetime | None = None) -> Table:
    """Instances with liveness, disk, dynamic cache, queue depth and inventory counts."""
    table = Table(title=f"Instances ({len(instances)})", title_justify="left")
    table.add_column("INSTANCE", no_wrap=True, style="bold")
    table.add_column("TYPE", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("HEARTBEAT", justify="right", no_wrap=True)
    table.add_column("DISK USED / FREE", no_wrap=True)
    table.add_column("DYNAMIC", justify="right", no_wrap=True)
    table.add_column("QUEUE", justify="right")
    table.add_column("STATIC/DYN", justify="right", no_wrap=True)
    table.add_column("DOWNLOADING")
    table.add_column("MIRROR / UPSTREAM", justify="right", no_wrap=True)
    for inst in sorted(instances, key=lambda i: str(i.get("instanceId", ""))):
        dm = _dict(inst.get("dependencyManager"))
        disk = _dict(dm.get("diskStats"))
        heartbeat_age = _heartbeat_age(inst, dm, now)
        table.add_row(
            str(inst.get("instanceId", "-")),
            str(inst.get("serverType", "-")),
            _liveness(inst, heartbeat_age).append(
                " drained" if inst.get("drained") else "", "yellow"
            ),
            format_age(heartbeat_age),
            disk_bar(
                _int(disk.get("usedBytes")),
                _int(disk.get("freeBytes")),
                _int(disk.get("totalBytes")),
            ),
            format_bytes(_int(dm.get("dynamicBytesUsed"))),
            _or_dash(dm.get("queueDepth")),
            f"{len(_list(dm.get('installedDepIdsStatic')))}/{len(_list(dm.get('installedDepIdsDynamic')))}",
            ", ".join(map(str, _list(dm.get("downloadingDepIds")))) or "-",
            source_bytes_text(inst),
        )
    return table


def deps_table(deps: list[JsonDoc]) -> Table:
    """The dependency catalog."""
    table = Table(title=f"Deps ({len(deps)})", title_justify="left")
    table.add_column("DEP", no_wrap=True, style="bold")
    table.add_column("KIND", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("AUTH", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("SHA256", no_wrap=True)
    table.add_column("PATH", overflow="fold")
    table.add_column("SOURCE", overflow="fold")
    for dep in sorted(deps, key=lambda d: str(d.get("depId", ""))):
        table.add_row(
            str(dep.get("depId", "-")),
            str(dep.get("kind", "-")),
            str(dep.get("type") or "-"),
            str(dep.get("auth", "-")),
            format_bytes(_int(dep.get("expectedSizeBytes"))),
            _sha_cell(dep),
            _path_cell(dep),
            _source_cell(dep),
        )
    return table


def sources_table(dep: JsonDoc) -> Table:
    """Where a dep's bytes come from, in the order agents try them: url, then sources."""
    table = Table(title=f"Sources of {dep.get('depId', '-')}", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("AS WRITTEN", overflow="fold")
    table.add_column("DOWNLOAD URL", overflow="fold")
    table.add_column("REVISION", no_wrap=True)
    first = str(dep.get("source") or dep.get("url") or "-")
    rows = [(first, str(dep.get("url") or "-"), dep.get("revision"))]
    for s in _list(dep.get("resolvedSources")):
        if isinstance(s, dict):
            url = str(s.get("url"))
            rows.append((str(s.get("source") or url), url, s.get("revision")))
    for n, (written, url, revision) in enumerate(rows, 1):
        table.add_row(str(n), written, url, str(revision)[:SHA_SHOWN] if revision else "-")
    return table


def locations_table(dep_id: str, locations: list[JsonDoc]) -> Table:
    """The instances holding a dep (or downloading it), with the file's state there."""
    table = Table(title=f"Instances with {dep_id} ({len(locations)})", title_justify="left")
    table.add_column("INSTANCE", no_wrap=True, style="bold")
    table.add_column("TYPE", no_wrap=True)
    table.add_column("INSTANCE STATUS", no_wrap=True)
    table.add_column("FILE", no_wrap=True)
    table.add_column("RECEIPT", no_wrap=True)
    table.add_column("SINCE", no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    for row in locations:
        state = str(row.get("state", "-"))
        if row.get("kind"):
            state += f" ({row['kind']})"
        table.add_row(
            str(row.get("instanceId", "-")),
            str(row.get("serverType") or "-"),
            str(row.get("instanceStatus") or "-"),
            state,
            str(row.get("receipt") or "-"),
            _ago(row.get("since")),
            str(row.get("error") or ""),
        )
    return table


def _ago(stamp: Any) -> str:
    age = age_since(parse_timestamp(stamp))
    return "-" if age is None else f"{format_age(age)} ago"


def _sha_cell(dep: JsonDoc) -> str:
    files = dep.get("files")
    if isinstance(files, list):
        return f"{len(files)} files"
    sha = dep.get("sha256")
    return f"{sha[:SHA_SHOWN]}…" if isinstance(sha, str) and sha else "-"


def _path_cell(dep: JsonDoc) -> str:
    # A model root (extra_model_paths.yaml section) prefixes the path: `shared:models/...`.
    path = str(dep.get("destRelativePath") or "-")
    if isinstance(dep.get("files"), list):
        path += "/"
    root = dep.get("root")
    return f"{root}:{path}" if root else path


def _source_cell(dep: JsonDoc) -> str:
    cell = _first_source(dep)
    # Further sources, tried in order after the url: one line each.
    for source in map(str, _list(dep.get("sources"))):
        cell += "\n+ " + (short_url(source) if source.startswith("http") else source)
    return cell


def _first_source(dep: JsonDoc) -> str:
    source = dep.get("source")
    if source:
        revision = dep.get("revision")
        pinned = f" @{str(revision)[:SHA_SHOWN]}" if revision and "@" not in str(source) else ""
        return f"{source}{pinned}"
    files = dep.get("files")
    if isinstance(files, list) and files:
        first = files[0] if isinstance(files[0], dict) else {}
        return str(first.get("source") or short_url(str(first.get("url") or "-")))
    return short_url(str(dep.get("url") or "-"))


def jobs_table(jobs: list[JsonDoc], *, now: datetime | None = None) -> Table:
    """Jobs: state, reserved instance, deps still missing, age."""
    table = Table(title=f"Jobs ({len(jobs)})", title_justify="left")
    table.add_column("JOB", no_wrap=True, style="bold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("INSTANCE", no_wrap=True)
    table.add_column("WAITING ON")
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("MIRROR / UPSTREAM", justify="right", no_wrap=True)
    for job in sorted(jobs, key=lambda j: str(j.get("createdAt", "")), reverse=True):
        table.add_row(
            str(job.get("jobId", "-")),
            state_text(job.get("state")),
            str(job.get("serverType") or "-"),
            str(job.get("instanceId") or "-"),
            ", ".join(map(str, waiting_on(job))) or "-",
            format_age(age_since(parse_timestamp(job.get("createdAt")), now)),
            source_bytes_text(job),
        )
    return table


def queue_table(instance_id: str, items: list[JsonDoc]) -> Table:
    """One instance's queue items."""
    table = Table(title=f"Queue of {instance_id} ({len(items)})", title_justify="left")
    table.add_column("ITEM", no_wrap=True, style="bold")
    table.add_column("DEP", no_wrap=True)
    table.add_column("OP", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("ATTEMPTS", justify="right")
    table.add_column("NEXT ATTEMPT", no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    for item in items:
        error = item.get("error")
        table.add_row(
            str(item.get("itemId", "-")),
            str(item.get("depId", "-")),
            str(item.get("op", "-")),
            _item_state(item),
            _or_dash(item.get("attempts")),
            _or_dash(item.get("nextAttemptAt")),
            _shorten(str(error)) if error else "-",
        )
    return table


def _item_state(item: JsonDoc) -> Text:
    """The state, and the upstream host a queued item waits for."""
    text = state_text(item.get("state"))
    host = item.get("waitingForUpstream")
    if host:
        text.append(f" (waiting for {host})", style="yellow")
    return text


def receipts_table(instance: JsonDoc) -> Table:
    """The verification receipts of one instance: what its agent proved of each file."""
    receipts = _list(_dict(instance.get("dependencyManager")).get("receipts"))
    title = f"Receipts of {instance.get('instanceId', '?')} ({len(receipts)})"
    table = Table(title=title, title_justify="left")
    table.add_column("DEP", no_wrap=True, style="bold")
    table.add_column("CHECK", no_wrap=True)
    table.add_column("SHA256", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("PATH", overflow="fold")
    table.add_column("AGENT", no_wrap=True)
    table.add_column("CATALOG", no_wrap=True)
    table.add_column("VERIFIED", no_wrap=True)
    for receipt in map(_dict, receipts):
        sha = receipt.get("sha256")
        matches = receipt.get("matchesCatalog") is True
        table.add_row(
            str(receipt.get("depId", "-")),
            str(receipt.get("algorithm") or "-"),
            f"{sha[:SHA_SHOWN]}…" if isinstance(sha, str) and sha else "-",
            format_bytes(_int(receipt.get("sizeBytes"))),
            str(receipt.get("destRelativePath") or "-"),
            str(receipt.get("agentVersion") or "-"),
            Text("matches", "green") if matches else Text("differs", "yellow"),
            str(receipt.get("verifiedAt") or receipt.get("receivedAt") or "-"),
        )
    return table


def job_table(job: JsonDoc, *, now: datetime | None = None) -> Table:
    """One job as a two-column property table, with its placement history."""
    table = Table(show_header=False, title=f"Job {job.get('jobId', '?')}", title_justify="left")
    table.add_column("FIELD", style="bold", no_wrap=True)
    table.add_column("VALUE", overflow="fold")
    table.add_row("state", state_text(job.get("state")))
    for label, key in (("server type", "serverType"), ("instance", "instanceId")):
        table.add_row(label, str(job.get(key) or "-"))
    table.add_row("deps", ", ".join(map(str, _list(job.get("depIds")))) or "-")
    table.add_row("waiting on", ", ".join(map(str, waiting_on(job))) or "-")
    table.add_row("age", format_age(age_since(parse_timestamp(job.get("createdAt")), now)))
    table.add_row("downloaded (mirror / upstream)", source_bytes_text(job))
    if job.get("error"):
        table.add_row("error", Text(str(job["error"]), style="red"))
    for raw in _list(job.get("history")):
        entry = _dict(raw)
        parts = [entry.get("at"), entry.get("event"), entry.get("instanceId")]
        line = " ".join(str(p) for p in parts if p)
        if entry.get("reason"):
            line += f" ({entry['reason']})"
        table.add_row("history", line)
    return table


def source_bytes_text(doc: JsonDoc) -> str:
    """`1.2 GiB / 0 B`: bytes an instance's or job's downloads got from the mirror and upstream."""
    counted = _dict(doc.get("sourceBytes"))
    if not counted:
        return "-"
    return (f"{format_bytes(_int(counted.get('mirror')) or 0)} / "
            f"{format_bytes(_int(counted.get('upstream')) or 0)}")


def disk_bar(used: int | None, free: int | None, total: int | None) -> Text:
    """`██████░░░░ 62% 120.0 GiB free`, red when nearly full."""
    if total is None and used is not None and free is not None:
        total = used + free
    if not total or (used is None and free is None):
        return Text("-")
    if used is None:
        used = total - (free or 0)
    if free is None:
        free = total - used
    ratio = min(1.0, max(0.0, used / total))
    filled = round(ratio * BAR_WIDTH)
    style = "green" if ratio < 0.75 else "yellow" if ratio < 0.9 else "bold red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (BAR_WIDTH - filled), style="dim")
    bar.append(f" {ratio:>4.0%} {format_bytes(free)} free")
    return bar


def short_url(url: str) -> str:
    """`huggingface.co/…/sd_xl_base_1.0.safetensors`: host and last path segment."""
    parts = urlsplit(url)
    segments = [p for p in parts.path.split("/") if p]
    if not parts.hostname or len(segments) < 2:
        return url
    return f"{parts.hostname}/…/{segments[-1]}"


def state_text(state: object) -> Text:
    """A state, coloured by what it means."""
    name = str(state) if state else "-"
    return Text(name, style=STATE_STYLES.get(name, ""))


def waiting_on(job: JsonDoc) -> list[Any]:
    """The deps a job still waits for, under whichever name the server uses."""
    for key in ("waitingOnDepIds", "missingDepIds"):
        if isinstance(job.get(key), list):
            return list(job[key])
    return []


def _heartbeat_age(inst: JsonDoc, dm: JsonDoc, now: datetime | None) -> float | None:
    for source in (inst, dm):
        for key in ("heartbeatAgeSeconds", "lastHeartbeatAgeSeconds"):
            if isinstance(source.get(key), int | float):
                return float(source[key])
    stamp = parse_timestamp(dm.get("lastHeartbeatAt") or inst.get("lastHeartbeatAt"))
    return age_since(stamp, now)


def _liveness(inst: JsonDoc, heartbeat_age: float | None) -> Text:
    if inst.get("lost") is True:
        return Text(*LIVENESS_LABELS["lost"])
    status = inst.get("status")
    if status in ("live", "stale", "never"):
        return Text(*LIVENESS_LABELS[status])
    if heartbeat_age is None:
        return Text(*LIVENESS_LABELS["never"])
    live = inst.get("live")
    if live is None and isinstance(inst.get("stale"), bool):
        live = not inst["stale"]
    if live is None:
        return Text("-")
    return Text(*LIVENESS_LABELS["live" if live else "stale"])


def _dict(value: object) -> JsonDoc:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"
