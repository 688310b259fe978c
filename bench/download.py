"""Download engine: depman's agent engine against curl and aria2c on one nginx origin.

    uv run python -m bench.download            # 1 GiB, 5 runs per tool and scenario
    uv run python -m bench.download --smoke    # 32 MiB, 1 run

Needs `nginx` (Debian `nginx-light`), `curl` and `aria2c` (Debian `aria2`).
The origin is nginx on 127.0.0.1 serving a random file from /dev/shm, once
unthrottled and once with `limit_rate 40m` per connection. Destinations are in
/dev/shm too, so the disk is not what is measured. Every tool runs as its own
process under GNU time for its peak RSS; runs are interleaved across tools so
that background noise spreads evenly. depman's figure is the engine's own wall
time (download + sha256 verify + rename, measured inside the runner process);
the process wall time, with interpreter start-up, is shown beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    GIB,
    MIB,
    REPO_ROOT,
    ResultTable,
    base_parser,
    median,
    record_results,
    run_timed,
    should_record,
)
from bench.origin import NginxOrigin, find_nginx, make_random_file

FILE_NAME = "blob.bin"


@dataclass
class Tool:
    """One way a user could fetch the file: a command builder, and whether it verifies."""

    name: str
    verifies: bool
    build: Callable[[str, Path], list[str]]
    needs: tuple[str, ...] = ()
    depman: bool = False


@dataclass
class Sample:
    wall: float  # the figure compared (engine wall for depman, process wall otherwise)
    process_wall: float
    rss: int


@dataclass
class ToolResult:
    tool: Tool
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def wall(self) -> float:
        return median([s.wall for s in self.samples])

    @property
    def process_wall(self) -> float:
        return median([s.process_wall for s in self.samples])

    @property
    def rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)


def _sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def make_tools(sha: str, size: int, min_segment: int | None) -> list[Tool]:
    py = sys.executable
    seg = ["--min-segment-bytes", str(min_segment)] if min_segment else []
    # aria2c will not split below its -k (default 20M): match depman's smoke segments.
    split = " -k1M" if min_segment else ""

    def depman(connections: int) -> Callable[[str, Path], list[str]]:
        return lambda url, dest: [py, "-m", "bench._download_runner", url, str(dest), sha,
                                  str(size), "--connections", str(connections), *seg]

    check = f"sha256sum {{dest}} | grep -q {sha}"
    aria = ("aria2c -q -x8 -s8" + split + " --allow-overwrite=true "
            "--auto-file-renaming=false -d {dir} -o {name} {url}")

    def shell(template: str) -> Callable[[str, Path], list[str]]:
        return lambda url, dest: _sh(template.format(url=url, dest=dest, dir=dest.parent,
                                                     name=dest.name))

    return [
        Tool("depman single stream (verified)", True, depman(1), depman=True),
        Tool("depman segmented x8 (verified)", True, depman(8), depman=True),
        Tool("curl -o (no verification)", False, shell("curl -sSf -o {dest} {url}"), ("curl",)),
        Tool("curl -o + sha256sum", True,
             shell("curl -sSf -o {dest} {url} && " + check), ("curl", "sha256sum")),
        Tool("aria2c -x8 -s8 (no verification)", False, shell(aria), ("aria2c",)),
        Tool("aria2c -x8 -s8 + sha256sum", True, shell(aria + " && " + check),
             ("aria2c", "sha256sum")),
    ]


def run_scenario(origin: NginxOrigin, tools: list[Tool], dest_dir: Path, throttled: bool,
                 runs: int, timeout: float) -> list[ToolResult]:
    results = [ToolResult(t) for t in tools]
    url = origin.url(FILE_NAME, throttled)
    for _ in range(runs):
        for res in results:
            if res.error:
                continue
            missing = [n for n in res.tool.needs if shutil.which(n) is None]
            if missing:
                res.error = f"missing {', '.join(missing)}"
                continue
            dest = dest_dir / "out.bin"
            for leftover in dest_dir.iterdir():
                leftover.unlink()
            run = run_timed(res.tool.build(url, dest), timeout=timeout)
            if run.returncode != 0:
                res.error = f"exit {run.returncode}: {(run.stderr or run.stdout)[-300:]}"
                continue
            wall = run.wall_seconds
            if res.tool.depman:
                info = json.loads(run.stdout.strip().splitlines()[-1])
                wall = float(info["wall"])
            res.samples.append(Sample(wall, run.wall_seconds, run.max_rss_bytes))
    for leftover in dest_dir.iterdir():
        leftover.unlink()
    return results


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and a == a and b == b else "—"


def render(title: str, results: list[ToolResult], size: int, base_prefix: str,
           base_label: str) -> ResultTable:
    table = ResultTable(title, ["tool", "median s", "MB/s", f"vs {base_label}",
                                "process s", "peak RSS MiB", "runs"])
    base = next((r.wall for r in results if r.tool.name.startswith(base_prefix) and r.samples),
                float("nan"))
    for r in results:
        if r.error or not r.samples:
            table.add(r.tool.name, "—", "—", "—", "—", "—", r.error or "no runs")
            continue
        table.add(r.tool.name, f"{r.wall:.3f}", f"{size / r.wall / 1e6:.0f}",
                  _ratio(r.wall, base), f"{r.process_wall:.3f}", f"{r.rss / MIB:.1f}",
                  len(r.samples))
    return table


def _find(results: list[ToolResult], prefix: str) -> ToolResult | None:
    return next((r for r in results if r.tool.name.startswith(prefix) and r.samples), None)


def curl_and_best_depman(fast: list[ToolResult]) -> tuple[ToolResult | None, ToolResult | None]:
    """The unthrottled reference (curl, unverified) and depman's fastest verified mode."""
    curl = _find(fast, "curl -o (no")
    best = min((r for r in fast if r.tool.depman and r.samples), key=lambda r: r.wall,
               default=None)
    return curl, best


def sha256_floor(path: Path, runs: int) -> float:
    """Median seconds for hashlib's SHA-256 alone over the file, read from /dev/shm.

    The floor of any verified download on this machine: SHA-256 is sequential, one core.
    """
    times = []
    for _ in range(runs):
        hasher = hashlib.sha256()
        t0 = time.perf_counter()
        with path.open("rb", buffering=0) as f:
            while block := f.read(8 * MIB):
                hasher.update(block)
        times.append(time.perf_counter() - t0)
    return median(times)


def floor_note(fast: list[ToolResult], floor: float) -> str | None:
    """Where depman's verified time and curl's spread stand against the SHA-256 floor."""
    curl, dm_best = curl_and_best_depman(fast)
    if not (curl and dm_best):
        return None
    walls = [s.wall for s in curl.samples]
    return (f"SHA-256 alone (hashlib, one core, the file in /dev/shm): {floor:.3f} s, the floor "
            f"of any verified download here; {dm_best.tool.name} takes {dm_best.wall / floor:.2f}x "
            f"that floor. curl unverified: median {curl.wall:.3f} s, runs "
            f"{min(walls):.3f}-{max(walls):.3f} s; when curl is at or below the floor, "
            f"the 1.10x target asks a verified download to hash faster than one core can.")


def verdicts(fast: list[ToolResult], slow: list[ToolResult]) -> list[str]:
    notes: list[str] = []

    def check(label: str, ok: bool, detail: str) -> None:
        notes.append(f"{label}: {detail} — {'met' if ok else 'MISSED'}.")

    curl, dm_best = curl_and_best_depman(fast)
    if curl and dm_best:
        ratio = dm_best.wall / curl.wall
        check("Unthrottled, depman verified vs curl unverified (target ≤1.10x)", ratio <= 1.10,
              f"{dm_best.tool.name} {ratio:.2f}x")
    aria = _find(slow, "aria2c -x8 -s8 (no")
    seg = _find(slow, "depman segmented")
    single = _find(slow, "depman single")
    if aria and seg:
        ratio = seg.wall / aria.wall
        check("Throttled, depman segmented vs aria2c -x8 (target ≤1.10x)", ratio <= 1.10,
              f"{ratio:.2f}x")
    if seg and single:
        speedup = single.wall / seg.wall
        check("Throttled, segmented vs single stream (target ≥6x)", speedup >= 6,
              f"{speedup:.1f}x faster")
    peaks = [r.rss for r in fast + slow if r.tool.depman and r.samples]
    if peaks:
        check("depman peak RSS (target <64 MiB)", max(peaks) < 64 * MIB,
              f"{max(peaks) / MIB:.1f} MiB, interpreter included")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, help="File size (default 1024; smoke 32).")
    parser.add_argument("--runs", type=int, help="Runs per tool and scenario (default 5).")
    parser.add_argument("--limit-rate", default="40m", help="nginx limit_rate when throttled.")
    parser.add_argument("--shm", type=Path, default=Path("/dev/shm"),
                        help="Where the origin file and the downloads live.")
    parser.add_argument("--tools", help="Comma-separated words; run only the tools whose name "
                        "contains one (e.g. 'segmented,curl -o (no,aria2c -x8 -s8 (no').")
    parser.add_argument("--scenarios", default="unthrottled,throttled",
                        help="Which scenarios to run (default both).")
    args = parser.parse_args(argv)
    size = (args.size_mib or (32 if args.smoke else 1024)) * MIB
    runs = args.runs or (1 if args.smoke else 5)
    # In smoke mode the file is small: let depman cut it into 8 segments anyway.
    min_segment = MIB if size < 256 * MIB else None
    if find_nginx() is None:
        print("nginx not found: apt-get install nginx-light", file=sys.stderr)
        return 2

    base = args.shm if args.shm.is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="depman-bench-dl-", dir=base) as tmp_name:
        tmp = Path(tmp_name)
        root, dest_dir = tmp / "www", tmp / "dest"
        root.mkdir(mode=0o755)
        dest_dir.mkdir()
        tmp.chmod(0o755)
        print(f"writing {size / MIB:.0f} MiB of random bytes to {root / FILE_NAME} ...")
        sha = make_random_file(root / FILE_NAME, size)
        floor = sha256_floor(root / FILE_NAME, min(runs, 3))
        tools = make_tools(sha, size, min_segment)
        if args.tools:
            words = [w.strip() for w in args.tools.split(",") if w.strip()]
            tools = [t for t in tools if any(w in t.name for w in words)]
        scenarios = {s.strip() for s in args.scenarios.split(",")}
        timeout = max(120.0, 4 * size / 40e6)
        with NginxOrigin(root, limit_rate=args.limit_rate) as origin:
            print(f"nginx on 127.0.0.1:{origin.port}; {runs} run(s) per tool")
            fast = (run_scenario(origin, tools, dest_dir, False, runs, timeout)
                    if "unthrottled" in scenarios else [])
            slow = (run_scenario(origin, tools, dest_dir, True, runs, timeout)
                    if "throttled" in scenarios else [])

    size_label = f"{size / GIB:.0f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"
    tables = [
        render(f"Unthrottled nginx, {size_label} from /dev/shm (median of {runs})", fast, size,
               "curl -o (no", "curl"),
        render(f"nginx limit_rate {args.limit_rate} per connection, {size_label} "
               f"(median of {runs})", slow, size, "aria2c -x8 -s8 (no", "aria2c"),
    ]
    for t in tables:
        t.print()
    notes = verdicts(fast, slow)
    if (note := floor_note(fast, floor)) is not None:
        notes.append(note)
    notes.append("depman 'median s' is the engine's time inside its process (download + "
                 "sha256 + rename); 'process s' adds Python start-up and imports, which a "
                 "long-running agent pays once. Other tools: process wall time.")
    for n in notes:
        print(n)
    failed = [r for r in fast + slow if r.error and not r.error.startswith("missing")]
    if should_record(args):
        cmd = "uv run python -m bench.download" + (" --smoke" if args.smoke else "")
        record_results("Download engine", cmd, tables, notes, args.results,
                       history="download")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
