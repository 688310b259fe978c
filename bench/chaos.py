"""Chaos soak: kill -9 the agent at random points of random downloads, then check the damage.

    uv run python -m bench.chaos                 # 50 kills (a few minutes), prints the result
    uv run python -m bench.chaos --record        # and records it in bench/RESULTS.md
    uv run python -m bench.chaos --smoke         # 5 kills

A real `depman server` (SQLite) and a real agent process on a throttled origin
(pieces over 4 connections at 2 MiB/s each, so every download takes seconds).
Jobs keep asking for random dynamic deps under a small `maxDynamicBytes`, so the
agent downloads, installs and evicts all the time. Each kill is aimed at one of:
a random moment, a random moment of a download, an eviction (the `Evicted` line)
or the state write of an install (the `Installed` line). After each kill, before
the restart, every file at a final path is hashed and the state file parsed.

Reported: corrupt files at final paths (must be 0), items that did not end
`succeeded` (lost, must be 0) and, per kill during a download, the bytes fetched
again after the restart: what the origin had sent for the file minus what the
kept partial holds (at most one sidecar save interval, 0.2 s, plus one read of
0.25 s, per connection).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MIB, ResultTable, base_parser, record_results, should_record

CONNECTIONS = 4
RATE = MIB  # bytes per second per connection (the origin's throttle)
SAVE_SECONDS = 0.2  # depman.agent.segments.SAVE_EVERY_SECONDS
READ_SECONDS = 0.25  # depman.agent.segments.READ_SECONDS
ALLOWANCE = CONNECTIONS * RATE * (SAVE_SECONDS + READ_SECONDS) + CONNECTIONS * 64 * 1024
TRIGGERS = ("moment", "download", "eviction", "state write")


@dataclass
class Soak:
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIGGERS, 0))
    corrupt: list[str] = field(default_factory=list)
    bad_state: int = 0
    refetch: list[int] = field(default_factory=list)  # per kill that hit a download
    details: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # side or temp files at the end
    jobs_done: int = 0
    downloads: int = 0
    evictions: int = 0
    seconds: float = 0.0


def file_set(rng: random.Random, count: int) -> dict[str, bytes]:
    return {f"c{i:02d}": rng.randbytes(rng.randint(3, 10) * MIB + rng.randint(0, MIB))
            for i in range(count)}


def log_count(lines: list[str], word: str, dep_id: str) -> int:
    return sum(1 for line in lines if f" {word} {dep_id} " in line)


def kept_bytes(partial: Path, sidecar: Path) -> int:
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return 0
    if meta.get("mode") == "pieces":
        return sum(end - start for start, end in meta.get("have", []))
    try:
        return partial.stat().st_size
    except OSError:
        return 0


def run(kills: int, seed: int) -> Soak:
    from tests.agent.running import AgentProcess, wait_until
    from tests.support.origin import ModelOrigin
    from tests.support.server import run_server

    from depman.agent.sidefiles import partial_path, sidecar_path

    rng = random.Random(seed)
    files = file_set(rng, 10)
    sha = {dep: hashlib.sha256(data).hexdigest() for dep, data in files.items()}
    rel = {dep: f"models/loras/{dep}.safetensors" for dep in files}
    soak = Soak()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="depman-chaos-") as tmp_name, \
            ModelOrigin() as origin, \
            run_server(f"sqlite:///{tmp_name}/chaos.db", cwd=Path(tmp_name),
                       extra_env={"DEPMAN_LOG_LEVEL": "warning",
                                  "DEPMAN_RUNNING_TIMEOUT_SECONDS": "20"}) as server:
        tmp = Path(tmp_name)
        for dep, data in files.items():
            origin.add(f"/m/{dep}.bin", data, rate=RATE)
        deps = {dep: {"url": origin.url(f"/m/{dep}.bin"), "auth": "none",
                      "destRelativePath": rel[dep], "sha256": sha[dep],
                      "expectedSizeBytes": len(files[dep]), "kind": "dynamic"}
                for dep in files}
        for dep, body in deps.items():
            server.admin("PUT", f"/admin/deps/{dep}", body)
        server.admin("PUT", "/admin/profiles/p1", {
            "staticDepIds": [], "prefetchOnBoot": False,
            "dynamicPolicy": {"enabled": True, "minFreeBytes": 0,
                              "maxDynamicBytes": 24 * MIB, "pinTtlSeconds": 0}})
        server.admin("PUT", "/admin/server-types/st",
                     {"modelManagement": {"mode": "dependency_manager_v1", "profileId": "p1"}})
        server.admin("PUT", "/admin/instances/i1", {"ip": "10.0.0.1", "serverType": "st"})
        workspace = tmp / "ws"
        env = {"FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": "st",
               "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret,
               "DM_INSTANCE_ID": "i1", "WORKSPACE": str(workspace),
               "DM_ALLOWED_DOMAINS": "127.0.0.1", "DM_MIN_SEGMENT_BYTES": "1MiB",
               "DM_DOWNLOAD_CONNECTIONS": str(CONNECTIONS), "DM_ITEM_RETRY_SECONDS": "0.5",
               "DM_HEARTBEAT_SECONDS": "5", "DM_PROGRESS_SECONDS": "1"}
        lines: list[str] = []  # every incarnation's log
        jobs: dict[str, str] = {}  # job id -> state seen

        def drive_jobs(submit: bool = True) -> None:
            for job_id in list(jobs):
                status, job = server.admin("GET", f"/jobs/{job_id}")
                state = job.get("state") if status == 200 and isinstance(job, dict) else None
                if state == "ready":
                    server.admin("POST", f"/jobs/{job_id}/start", {})
                    server.admin("POST", f"/jobs/{job_id}/complete", {"ok": True})
                    soak.jobs_done += 1
                    del jobs[job_id]
                elif state in ("failed", "expired", "cancelled", "completed"):
                    del jobs[job_id]
            while submit and len(jobs) < 2:
                status, job = server.admin("POST", "/jobs", {
                    "serverType": "st", "depIds": rng.sample(sorted(files), 2)})
                if status >= 300:
                    break
                jobs[job["jobId"]] = "new"

        def check_disk() -> None:
            for dep in files:
                final = workspace / "ComfyUI" / rel[dep]
                if final.exists() and hashlib.sha256(final.read_bytes()).hexdigest() != sha[dep]:
                    soak.corrupt.append(f"{dep} after kill {sum(soak.kills.values())}")
            try:
                json.loads((workspace / "dependency_agent_state.json").read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError):
                soak.bad_state += 1

        def on_disk(dep: str) -> tuple[bool, int]:
            final = workspace / "ComfyUI" / rel[dep]
            partial = partial_path(final)
            return partial.exists(), kept_bytes(partial, sidecar_path(final))

        def snapshot() -> dict[str, tuple[int, int]]:
            """Per file: bytes the origin has sent, bytes a partial keeps (at a start)."""
            return {dep: (origin.bytes_served(f"/m/{dep}.bin"), on_disk(dep)[1])
                    for dep in files}

        def account(start: dict[str, tuple[int, int]], agent_lines: list[str]) -> None:
            """Per file in flight at the kill: bytes this run fetched that nothing keeps."""
            for dep in files:
                in_flight, kept = on_disk(dep)
                if not in_flight:
                    continue
                served0, kept0 = start[dep]
                installed = log_count(agent_lines, "Installed", dep)
                fetched = origin.bytes_served(f"/m/{dep}.bin") - served0
                if installed:  # finished once in this run, then started again
                    kept0 = 0
                    fetched -= installed * len(files[dep])
                lost_now = max(0, fetched - (kept - kept0))
                soak.refetch.append(lost_now)
                soak.details.append(f"{dep}: this run fetched {fetched}, the partial keeps "
                                    f"{kept} (was {kept0}) of {len(files[dep])}")

        for number in range(kills):
            trigger = TRIGGERS[number % len(TRIGGERS)] if number < len(TRIGGERS) \
                else rng.choice(TRIGGERS)
            start = snapshot()
            with AgentProcess(env) as agent:
                agent.wait_for_line("Registered dependency agent", timeout=60)
                deadline = time.time() + 30
                pattern = {"download": " Downloading ", "eviction": " Evicted dynamic dep ",
                           "state write": " Installed "}.get(trigger)
                if pattern is not None:
                    hit = wait_until(lambda p=pattern, n=len(agent.lines), a=agent: drive_jobs()
                                     or any(p in line for line in a.lines[n:]),
                                     deadline - time.time(), step=0.02)
                    if not hit:
                        trigger = "moment"  # the event did not come: a plain random moment
                    if trigger == "download":
                        time.sleep(rng.uniform(0.1, 2.0))
                else:
                    end = time.time() + rng.uniform(0.3, 5.0)
                    while time.time() < end:
                        drive_jobs()
                        time.sleep(0.1)
                assert agent.proc is not None
                agent.proc.kill()  # SIGKILL: no shutdown of any kind
                agent.proc.wait(10)
                soak.kills[trigger] += 1
                check_disk()
                account(start, list(agent.lines))
                lines.extend(agent.lines)
        # No more kills: let every item finish, then look at every item.
        with AgentProcess(env) as agent:
            settle_end = time.time() + 240

            def settled() -> bool:
                drive_jobs(submit=False)
                status, body = server.admin("GET", "/admin/queues/i1/items")
                items = body.get("items", []) if status == 200 else []
                return not jobs and all(i["state"] in ("succeeded", "failed", "cancelled")
                                        for i in items)

            wait_until(settled, settle_end - time.time(), step=0.5)
            _status, body = server.admin("GET", "/admin/queues/i1/items")
            for item in body.get("items", []):
                if item["state"] != "succeeded":
                    soak.lost.append(f"{item['depId']}: {item['state']} {item.get('error')}")
            agent.stop()
            lines.extend(agent.lines)
        check_disk()
        finals = {Path(r).name for r in rel.values()}
        for path in (workspace / "ComfyUI" / "models" / "loras").iterdir():
            if path.name not in finals:
                soak.leftovers.append(path.name)
        soak.leftovers += [p.name for p in workspace.glob("*.tmp")]
        soak.downloads = sum(1 for line in lines if " Installed " in line)
        soak.evictions = sum(1 for line in lines if " Evicted dynamic dep " in line)
    soak.seconds = time.time() - started
    return soak


def render(soak: Soak, kills: int) -> tuple[ResultTable, list[str]]:
    table = ResultTable("Chaos soak: kill -9 of the agent at random points",
                        ["kills", "by trigger", "corrupt final files", "bad state files",
                         "lost items", "files left over", "kills mid-download",
                         "re-fetched per kill: mean", "max", "allowance", "downloads",
                         "evictions", "jobs done"])
    refetch = soak.refetch or [0]
    table.add(kills, ", ".join(f"{k} {v}" for k, v in soak.kills.items()), len(soak.corrupt),
              soak.bad_state, len(soak.lost), len(soak.leftovers), len(soak.refetch),
              f"{sum(refetch) / len(refetch) / MIB:.2f} MiB", f"{max(refetch) / MIB:.2f} MiB",
              f"{ALLOWANCE / MIB:.2f} MiB", soak.downloads, soak.evictions, soak.jobs_done)
    holds = (not soak.corrupt and not soak.bad_state and not soak.lost
             and not soak.leftovers and max(refetch) <= ALLOWANCE)
    notes = [f"{'HOLDS' if holds else 'FAILS'}: 0 corrupt files at final paths, 0 lost items, "
             f"each restart re-fetching at most one save interval per connection "
             f"({CONNECTIONS} connections x {RATE / MIB:g} MiB/s x ({SAVE_SECONDS} s save + "
             f"{READ_SECONDS} s read) + one 64 KiB origin write each = "
             f"{ALLOWANCE / MIB:.2f} MiB).",
             f"{soak.seconds:.0f} s; 10 files of 3-11 MiB, maxDynamicBytes 24 MiB, jobs of 2 "
             "random deps completed as soon as ready."]
    notes += [f"corrupt: {c}" for c in soak.corrupt] + [f"lost: {x}" for x in soak.lost]
    notes += [f"left over: {x}" for x in soak.leftovers]
    return table, notes


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, help="kill -9s (default 50; smoke 5)")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    kills = args.kills or (5 if args.smoke else 50)
    soak = run(kills, args.seed)
    table, notes = render(soak, kills)
    table.print()
    for line in soak.details:
        print("  re-fetch:", line)
    for note in notes:
        print(note)
    if should_record(args):
        given = sys.argv[1:] if argv is None else argv
        record_results("Chaos soak", " ".join(["uv run python -m bench.chaos", *given]),
                       [table], notes, args.results, history="chaos")
    ok = not soak.corrupt and not soak.bad_state and not soak.lost and not soak.leftovers
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
