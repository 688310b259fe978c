"""Server-side request latency over a window, from the server's `/metrics`.

The fleet simulator measures latency from when each request was due, so time
spent queueing in its connection pool counts. The server's own histogram
(`depman_http_request_duration_seconds`) says how much of that was the server:
two scrapes bracket the window, and p50/p99 per route come from the bucket
deltas. With several server processes every scrape sums all of them (the
multiprocess mode), so the two scrapes may reach different processes. Each asks
(`name[]`) for only the series read here: a full scrape at 10,000 instances also
reads every instance row and writes ~90,000 lines (the per-instance gauges), a
burst of work that would land in the window it measures. The same scrapes count
the server's pauses over 100 ms (its pause histograms).
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections import defaultdict

from bench.fleetclient import HttpError, Pool

BUCKET_RE = re.compile(
    r'^depman_http_request_duration_seconds_bucket\{le="([^"]+)",method="(\w+)",'
    r'route="([^"]+)",status="(\d+)"\} ([\d.e+]+)$',
    re.M,
)
PAUSE_RE = re.compile(
    r'^depman_(event_loop_lag|gc_pause|periodic_task)_seconds_bucket\{([^}]*)\} ([\d.e+]+)$', re.M
)
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')
# What a pause is said to be, from its histogram and label.
PAUSE_NAMES = {"event_loop_lag": "loop lag", "gc_pause": "gc gen {generation}",
               "periodic_task": "{task}"}
STAGE_RE = re.compile(
    r'^depman_agent_(memo|quick|full)_answers_total\{endpoint="([^"]+)"\} ([\d.e+]+)$', re.M
)
# The sample names the regular expressions above read: all a scrape here asks for.
SCRAPED = [
    "depman_http_request_duration_seconds_bucket",
    *(f"depman_{pause}_seconds_bucket" for pause in PAUSE_NAMES),
    *(f"depman_agent_{stage}_answers_total" for stage in ("memo", "quick", "full")),
]
SCRAPE_PATH = "/metrics?" + urllib.parse.urlencode([("name[]", name) for name in SCRAPED])


def buckets(text: str) -> dict[str, dict[float, float]]:
    """'METHOD route' → {upper bound: cumulative count}, 2xx answers only."""
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for le, method, route, status, count in BUCKET_RE.findall(text):
        if status.startswith("2"):
            out[f"{method} {route}"][float(le)] += float(count)
    return out


def stage_counts(text: str) -> dict[tuple[str, str], float]:
    """(endpoint, gateway stage) → agent requests answered there so far."""
    return {(endpoint, stage): float(count) for stage, endpoint, count in STAGE_RE.findall(text)}


def pause_counts(text: str) -> dict[tuple[str, float], float]:
    """(pause kind, bucket bound) → cumulative count, summed over the processes."""
    out: dict[tuple[str, float], float] = defaultdict(float)
    for metric, labels, count in PAUSE_RE.findall(text):
        values = dict(LABEL_RE.findall(labels))
        bound = float(values.pop("le"))
        out[PAUSE_NAMES[metric].format(**values), bound] += float(count)
    return dict(out)


def quantile(cumulative: dict[float, float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation within its bucket."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        upto = cumulative[bound]
        if upto >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (upto - below) if upto > below else 1.0
            return lower + share * (bound - lower)
        lower, below = bound, upto
    return lower


class ServerLatency:
    """Scrapes /metrics at the start and end of a window."""

    def __init__(self, host: str, port: int) -> None:
        self.pool = Pool(host, port, 1)
        self.first: dict[str, dict[float, float]] = {}
        self.last: dict[str, dict[float, float]] = {}
        self.first_stages: dict[tuple[str, str], float] = {}
        self.last_stages: dict[tuple[str, str], float] = {}
        self.first_pauses: dict[tuple[str, float], float] = {}
        self.last_pauses: dict[tuple[str, float], float] = {}

    async def _scrape(self) -> str:
        status, body = await self.pool.request("GET", SCRAPE_PATH)
        if status != 200:
            raise HttpError(f"/metrics answered {status}")
        return body.decode()

    async def start(self) -> None:
        """First scrape."""
        with contextlib.suppress(HttpError):
            text = await self._scrape()
            self.first, self.first_stages = buckets(text), stage_counts(text)
            self.first_pauses = pause_counts(text)

    async def stop(self) -> None:
        """Last scrape."""
        with contextlib.suppress(HttpError):
            text = await self._scrape()
            self.last, self.last_stages = buckets(text), stage_counts(text)
            self.last_pauses = pause_counts(text)
        self.pool.close()

    def long_pauses(self, over: float = 0.1) -> dict[str, int]:
        """Pause kind → how many of its pauses in the window lasted longer than `over` seconds."""
        out: dict[str, int] = {}
        for (kind, bound), total in self.last_pauses.items():
            if bound != float("inf"):
                continue
            below = max((n - self.first_pauses.get((kind, b), 0.0)
                         for (k, b), n in self.last_pauses.items()
                         if k == kind and b <= over), default=0.0)
            longer = int(total - self.first_pauses.get((kind, bound), 0.0) - below)
            if longer > 0:
                out[kind] = longer
        return out

    def stages(self) -> dict[str, dict[str, int]]:
        """endpoint → {gateway stage: agent requests it answered} over the window."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (endpoint, stage), count in self.last_stages.items():
            out[endpoint][stage] = int(count - self.first_stages.get((endpoint, stage), 0.0))
        return dict(out)

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(route, requests, p50 s, p99 s) over the window, busiest first."""
        out = []
        for route, after in self.last.items():
            before = self.first.get(route, {})
            delta = {le: n - before.get(le, 0.0) for le, n in after.items()}
            count = max(delta.values(), default=0.0)
            if count > 0:
                out.append((route, int(count), quantile(delta, 0.5), quantile(delta, 0.99)))
        return sorted(out, key=lambda row: -row[1])
