"""Placement and cache quality: a trace-driven fleet simulation (no real bytes).

    uv run python -m bench.placement            # 50 instances, 2,000 deps, 20,000 jobs
    uv run python -m bench.placement --smoke    # seconds

The same job trace is replayed under four placement policies (depman's decision,
`depman.core.placement.choose_placement`, with its default max wait and with max
wait 0; random; least-loaded); every instance runs one job at a time and keeps an LRU
cache of dynamic deps under its disk cap, as the agent does. Reported per policy:
bytes downloaded per job, cache hit ratio (requests and bytes), time-to-ready.
Then depman's per-instance request sequences are replayed once more with
Belady's offline policy (evict the dep whose next use is furthest away) to show
how far LRU eviction is from the offline reference on the same placements.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.common import (
    GIB,
    MIB,
    ResultTable,
    base_parser,
    fmt_bytes,
    median,
    percentile,
    record_results,
    should_record,
)
from depman.core.placement import (
    Candidate,
    choose_placement,
    expected_wait_seconds,
    typical_job_seconds,
)
from depman.core.policy import Policy as ServerPolicy
from depman.core.scheduler import RECENT_JOBS

# ---------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Dep:
    dep_id: str
    size: int
    family: str  # lora | checkpoint | video


@dataclass(frozen=True)
class Job:
    job_id: str
    arrival: float
    dep_ids: tuple[str, ...]
    run_seconds: float


@dataclass(frozen=True)
class Workload:
    deps: dict[str, Dep]
    jobs: list[Job]
    caps: list[int]  # disk cap of each instance's dynamic cache, bytes
    bandwidth: float  # bytes/s an instance downloads at


@dataclass(frozen=True)
class Scale:
    instances: int
    deps: int
    jobs: int
    video_models: int


FULL = Scale(instances=50, deps=2000, jobs=20_000, video_models=5)
SMOKE = Scale(instances=8, deps=200, jobs=600, video_models=2)


def _zipf_cum(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (r**s) for r in range(1, n + 1)))


def make_workload(scale: Scale, *, seed: int, zipf_s: float, load: float) -> Workload:
    """Catalog with realistic sizes, Zipf popularity, Poisson arrivals at `load` utilisation."""
    rng = random.Random(seed)
    n_ckpt = max(4, scale.deps // 5)
    n_video = scale.video_models
    n_lora = scale.deps - n_ckpt - n_video
    deps: dict[str, Dep] = {}

    def add(family: str, count: int, mean: float, sigma: float) -> list[str]:
        ids = []
        for i in range(count):
            size = int(rng.lognormvariate(0, sigma) * mean)
            dep = Dep(f"{family}-{i:04d}", size, family)
            deps[dep.dep_id] = dep
            ids.append(dep.dep_id)
        return ids

    loras = add("lora", n_lora, 150 * MIB, 0.5)
    ckpts = add("checkpoint", n_ckpt, 6.5 * GIB, 0.15)
    videos = add("video", n_video, 20 * GIB, 0.05)
    # Popularity ranks are shuffled so that popularity is independent of the id.
    for ids in (loras, ckpts, videos):
        rng.shuffle(ids)
    cum = {name: _zipf_cum(len(ids), zipf_s) for name, ids in
           (("lora", loras), ("checkpoint", ckpts), ("video", videos))}

    def pick(ids: list[str], family: str) -> str:
        return rng.choices(ids, cum_weights=cum[family])[0]

    raw: list[tuple[tuple[str, ...], float]] = []
    for _ in range(scale.jobs):
        base = pick(videos, "video") if rng.random() < 0.03 else pick(ckpts, "checkpoint")
        n_l = rng.choice((0, 1, 1, 2, 2, 3))
        chosen: list[str] = [base]
        for _ in range(n_l):
            lora = pick(loras, "lora")
            if lora not in chosen:
                chosen.append(lora)
        raw.append((tuple(chosen), rng.uniform(20, 120)))  # ComfyUI job: 20 s .. 2 min

    bandwidth = 250 * MIB  # ~2 Gbit/s, a typical rented GPU host
    # Arrival rate so that the fleet is `load` busy if every dep were a hit.
    mean_run = sum(r for _, r in raw) / len(raw)
    rate = load * scale.instances / mean_run
    t = 0.0
    jobs = []
    for i, (dep_ids, run) in enumerate(raw):
        t += rng.expovariate(rate)
        jobs.append(Job(f"job-{i:05d}", t, dep_ids, run))
    caps = [int(rng.choice((80, 100, 120, 150, 200)) * GIB) for _ in range(scale.instances)]
    return Workload(deps, jobs, caps, bandwidth)


# The server's maintenance sweep interval (maintenance_interval_seconds' default).
SWEEP_SECONDS = 5.0

# ---------------------------------------------------------------------------- fleet state


@dataclass
class Node:
    """One simulated instance: its LRU cache of deps and its single job slot."""

    index: int
    instance_id: str
    cap: int
    cache: OrderedDict[str, int] = field(default_factory=OrderedDict)  # dep -> size, LRU first
    used: int = 0
    busy_until: float = 0.0
    placed_at: float = 0.0  # of the job it runs now
    jobs_run: int = 0
    busy_seconds: float = 0.0
    requests: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)

    @property
    def free_bytes(self) -> int:
        return self.cap - self.used


# A policy picks one of the free nodes for a job.
Policy = Callable[[Job, Sequence[Node], dict[str, Dep]], Node]


@dataclass(frozen=True)
class Moment:
    """What a placement decision may know besides the nodes: the clock and recent history."""

    now: float
    waiting_since: float | None  # when this job first chose to wait, if it did
    recent_durations: Sequence[float]  # placed -> done of the last completed jobs


# A chooser sees free and busy nodes; None means "wait for a busy one" (stay pending).
Chooser = Callable[[Job, Sequence[Node], Sequence[Node], Moment], "Node | None"]


def never_wait(policy: Policy, deps: dict[str, Dep]) -> Chooser:
    """A free-instance-only policy as a chooser."""
    return lambda job, free, busy, moment: policy(job, free, deps)


def policy_random(seed: int) -> Policy:
    rng = random.Random(seed)

    def choose(job: Job, free: Sequence[Node], deps: dict[str, Dep]) -> Node:
        return rng.choice(list(free))

    return choose


def policy_least_loaded(job: Job, free: Sequence[Node], deps: dict[str, Dep]) -> Node:
    """The free node that has done the least work so far (ties: most free disk)."""
    return min(free, key=lambda n: (n.busy_seconds, -n.free_bytes, n.instance_id))


def policy_depman(deps: dict[str, Dep], *, max_wait_s: float, bandwidth: float,
                  default_job_s: float) -> Chooser:
    """depman's real decision (`depman.core.placement.choose_placement`), as the scheduler
    calls it: free instances ranked, busy holders weighed by download time saved against
    the wait estimated from their active job's age and recent job durations."""

    def candidate(job: Job, n: Node, now: float) -> Candidate:
        # Free-slot instances have no job downloads queued in this model.
        return Candidate(instance_id=n.instance_id,
                         held_dep_ids=frozenset(d for d in job.dep_ids if d in n.cache),
                         queued_bytes=0, free_bytes=n.free_bytes,
                         active_elapsed_s=(now - n.placed_at,))

    def choose(job: Job, free: Sequence[Node], busy: Sequence[Node], m: Moment) -> Node | None:
        by_id = {n.instance_id: n for n in free}
        job_deps: dict[str, int | None] = {d: deps[d].size for d in job.dep_ids}
        waited = m.now - m.waiting_since if m.waiting_since is not None else 0.0
        typical = typical_job_seconds(m.recent_durations, default_job_s)
        decision = choose_placement(
            [candidate(job, n, m.now) for n in free],
            [candidate(job, n, m.now) for n in busy if any(d in n.cache for d in job.dep_ids)],
            job_deps,
            bandwidth_bytes_per_s=bandwidth,
            max_wait_s=max_wait_s - waited,
            expected_wait_s_for=lambda c: expected_wait_seconds(c.active_elapsed_s, typical),
        )
        if decision.place_on is None:
            return None
        return by_id[decision.place_on.instance_id]

    return choose


# ---------------------------------------------------------------------------- simulation


@dataclass
class PolicyResult:
    name: str
    jobs: int
    bytes_downloaded: int
    dep_requests: int
    dep_hits: int
    bytes_requested: int
    ttr: list[float]
    evictions: int
    nodes: list[Node]
    waited: int = 0  # jobs that waited for a busy node at least once

    @property
    def bytes_per_job(self) -> float:
        return self.bytes_downloaded / self.jobs

    @property
    def hit_ratio(self) -> float:
        return self.dep_hits / self.dep_requests if self.dep_requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return 1 - self.bytes_downloaded / self.bytes_requested if self.bytes_requested else 0.0


def _make_room(node: Node, need: int, pinned: set[str]) -> int:
    """LRU eviction of unpinned deps until `need` bytes fit; answers evictions made."""
    evicted = 0
    if node.free_bytes >= need:
        return 0
    for dep_id in list(node.cache):
        if node.free_bytes >= need:
            break
        if dep_id in pinned:
            continue
        node.used -= node.cache.pop(dep_id)
        evicted += 1
    return evicted


def simulate(name: str, choose: Chooser, work: Workload, *, max_wait_s: float = 0.0,
             sweep_s: float = SWEEP_SECONDS) -> PolicyResult:
    """Replay the trace; pending jobs are offered the free nodes oldest first at every event.

    Events, as in the server: an arrival (submit), a completion (frees a slot), and
    the maintenance sweep every `sweep_s`, which is what places a job whose wait
    for a busy node ran out while no node completed.
    """
    nodes = [Node(i, f"inst-{i:03d}", cap) for i, cap in enumerate(work.caps)]
    free: set[int] = {n.index for n in nodes}
    completions: list[tuple[float, int]] = []
    sweeps: list[float] = []
    pending: list[Job] = []
    waiting_since: dict[str, float] = {}
    recent: deque[float] = deque(maxlen=RECENT_JOBS)
    res = PolicyResult(name, len(work.jobs), 0, 0, 0, 0, [], 0, nodes)
    deps = work.deps

    def place(job: Job, node: Node, now: float) -> None:
        free.discard(node.index)
        node.requests.append((len(res.ttr), job.dep_ids))
        pinned = set(job.dep_ids)
        missing = [d for d in job.dep_ids if d not in node.cache]
        res.dep_requests += len(job.dep_ids)
        res.dep_hits += len(job.dep_ids) - len(missing)
        res.bytes_requested += sum(deps[d].size for d in job.dep_ids)
        for d in job.dep_ids:
            if d in node.cache:
                node.cache.move_to_end(d)  # the `touch` placement queues
        download = 0
        for d in missing:
            size = deps[d].size
            res.evictions += _make_room(node, size, pinned)
            node.cache[d] = size
            node.used += size
            download += size
        res.bytes_downloaded += download
        ready = now + download / work.bandwidth
        res.ttr.append(ready - job.arrival)
        if job.job_id in waiting_since:
            res.waited += 1
        node.placed_at = now
        node.busy_until = ready + job.run_seconds
        node.busy_seconds += node.busy_until - now
        node.jobs_run += 1
        heapq.heappush(completions, (node.busy_until, node.index))

    def dispatch(now: float) -> None:
        i = 0
        while i < len(pending) and free:
            job = pending[i]
            free_nodes = [nodes[k] for k in sorted(free)]
            busy_nodes = [n for n in nodes if n.index not in free]
            moment = Moment(now, waiting_since.get(job.job_id), recent)
            node = choose(job, free_nodes, busy_nodes, moment)
            if node is None:
                if job.job_id not in waiting_since:
                    waiting_since[job.job_id] = now
                    # The first sweep after the allowance runs out places it.
                    heapq.heappush(sweeps, math.ceil((now + max_wait_s) / sweep_s) * sweep_s)
                i += 1
                continue
            pending.pop(i)
            place(job, node, now)

    def advance(until: float) -> None:
        while True:
            t_done = completions[0][0] if completions else math.inf
            t_sweep = sweeps[0] if sweeps else math.inf
            t = min(t_done, t_sweep)
            if t > until or t == math.inf:
                return
            if t_done <= t_sweep:
                _, idx = heapq.heappop(completions)
                free.add(idx)
                recent.append(nodes[idx].busy_until - nodes[idx].placed_at)
            else:
                heapq.heappop(sweeps)
            dispatch(t)

    for job in work.jobs:
        advance(job.arrival)
        pending.append(job)
        dispatch(job.arrival)
    advance(math.inf)
    assert not pending, "jobs left pending with no event to place them"
    return res


def belady_bytes(node: Node, deps: dict[str, Dep]) -> tuple[int, int]:
    """Bytes downloaded and evictions on `node`'s request sequence under Belady's policy.

    Evicts the cached dep whose next request is furthest in the future (never one
    the current job needs). With unequal sizes this is the classic offline
    reference rather than the exact byte-optimal policy, which is NP-hard.
    """
    uses: dict[str, list[int]] = {}
    for pos, (_, dep_ids) in enumerate(node.requests):
        for d in dep_ids:
            uses.setdefault(d, []).append(pos)

    def next_use(d: str, pos: int) -> int:
        lst = uses[d]
        k = bisect.bisect_right(lst, pos)
        return lst[k] if k < len(lst) else 1 << 60

    cache: dict[str, int] = {}
    used = downloaded = evictions = 0
    for pos, (_, dep_ids) in enumerate(node.requests):
        pinned = set(dep_ids)
        for d in dep_ids:
            if d in cache:
                continue
            size = deps[d].size
            if used + size > node.cap:
                victims = sorted((d2 for d2 in cache if d2 not in pinned),
                                 key=lambda d2: next_use(d2, pos), reverse=True)
                for v in victims:
                    if used + size <= node.cap:
                        break
                    used -= cache.pop(v)
                    evictions += 1
            cache[d] = size
            used += size
            downloaded += size
    return downloaded, evictions


# ---------------------------------------------------------------------------- command


def run_load(scale: Scale, seed: int, zipf: float, load: float, max_wait_s: float
             ) -> tuple[list[PolicyResult], int, int]:
    """depman (with and without waits), random, least-loaded on one trace; then Belady."""
    work = make_workload(scale, seed=seed, zipf_s=zipf, load=load)
    default_job_s = ServerPolicy().placement_default_job_seconds

    def depman(wait_s: float) -> Chooser:
        return policy_depman(work.deps, max_wait_s=wait_s, bandwidth=work.bandwidth,
                             default_job_s=default_job_s)

    results = [
        simulate("depman", depman(max_wait_s), work, max_wait_s=max_wait_s),
        simulate("depman, no wait", depman(0.0), work, max_wait_s=0.0),
        simulate("random", never_wait(policy_random(seed), work.deps), work),
        simulate("least-loaded", never_wait(policy_least_loaded, work.deps), work),
    ]
    bel_total = bel_evictions = 0
    for node in results[0].nodes:
        b, e = belady_bytes(node, work.deps)
        bel_total += b
        bel_evictions += e
    return results, bel_total, bel_evictions


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of popularity.")
    parser.add_argument("--load", default="0.5,0.7",
                        help="Fleet utilisation(s) if every dep were a cache hit, comma-separated.")
    parser.add_argument("--instances", type=int)
    parser.add_argument("--deps", type=int)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--max-wait", type=float,
                        default=ServerPolicy().placement_max_wait_seconds,
                        help="depman's placement_max_wait_seconds (the server's default).")
    args = parser.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    scale = Scale(args.instances or scale.instances, args.deps or scale.deps,
                  args.jobs or scale.jobs, scale.video_models)
    loads = [float(x) for x in args.load.split(",")]

    table = ResultTable(
        f"Placement: {scale.instances} instances, {scale.deps} deps, {scale.jobs} jobs "
        f"(Zipf s={args.zipf})",
        ["load", "policy", "bytes/job", "vs depman", "hit ratio", "byte hit ratio",
         "evictions", "waited", "TTR p50 s", "TTR p99 s", "TTR mean s"],
    )
    belady = ResultTable(
        "Eviction on depman's placements: LRU (the agent's) vs Belady (offline)",
        ["load", "eviction", "bytes/job", "evictions", "vs Belady"],
    )
    notes: list[str] = []
    for load in loads:
        results, bel_total, bel_evictions = run_load(scale, args.seed, args.zipf, load,
                                                     args.max_wait)
        base = results[0].bytes_per_job or 1.0
        for r in results:
            table.add(f"{load:g}", r.name, fmt_bytes(r.bytes_per_job),
                      f"{r.bytes_per_job / base:.2f}x", f"{r.hit_ratio:.1%}",
                      f"{r.byte_hit_ratio:.1%}", r.evictions, f"{r.waited / r.jobs:.1%}",
                      f"{median(r.ttr):.1f}", f"{percentile(r.ttr, 99):.1f}",
                      f"{sum(r.ttr) / len(r.ttr):.1f}")
        lru_total = results[0].bytes_downloaded
        belady.add(f"{load:g}", "LRU", fmt_bytes(lru_total / scale.jobs), results[0].evictions,
                   f"{lru_total / bel_total:.3f}x" if bel_total else "—")
        belady.add(f"{load:g}", "Belady", fmt_bytes(bel_total / scale.jobs), bel_evictions,
                   "1.000x")
        by_name = {r.name: r for r in results}
        ratio = by_name["random"].bytes_per_job / base
        ratio_no_wait = by_name["random"].bytes_per_job / (
            by_name["depman, no wait"].bytes_per_job or 1.0)
        notes.append(
            f"Load {load:g}: random placement downloads {ratio:.2f}x the bytes per job of "
            f"depman (target ≥3x: {'met' if ratio >= 3 else 'MISSED'}; without waits "
            f"{ratio_no_wait:.2f}x, {'met' if ratio_no_wait >= 3 else 'missed'}); "
            f"LRU eviction downloads {lru_total / max(bel_total, 1):.3f}x the bytes of "
            f"Belady's offline policy on the same placements.")
    table.print()
    belady.print()
    default_job_s = ServerPolicy().placement_default_job_seconds
    notes.insert(0, "Decision measured: depman.core.placement.choose_placement (the scheduler's "
                    f"own), placement_max_wait_seconds={args.max_wait:g}, bandwidth as modelled, "
                    "job duration estimated as the server does (median of the last "
                    f"{RECENT_JOBS} completed, default {default_job_s:g} s); 'depman, no wait' "
                    "is the same with max wait 0 (placement before waits).")
    notes.append(
        "Model: one job slot per instance; pending jobs are offered the free instances oldest "
        "first at every arrival, completion and 5 s sweep; depman may leave a job pending to "
        "wait for a busy instance that holds more of its bytes ('waited' = share of jobs that "
        "did); missing deps download at 250 MiB/s per instance; time-to-ready = queueing + "
        "waiting + download; caches are LRU under per-instance caps of 80-200 GiB. 'load' is "
        "the utilisation if every dep were a hit; downloads push the real one higher.")
    for n in notes:
        print(n)
    if should_record(args):
        cmd = "uv run python -m bench.placement" + (" --smoke" if args.smoke else "")
        record_results("Placement and cache quality", cmd, [table, belady], notes,
                       args.results, history="placement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
