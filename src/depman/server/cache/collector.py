"""The cache's figures in /metrics, read at scrape time: no work on the request path."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from depman.server.cache import ServerCache
from depman.server.cache.wakeups import WakeupKind


class CacheCollector(Collector):
    """Long-polls waiting now; changes sent to and received from the other replicas."""

    def __init__(self, cache: ServerCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cache = self._cache
        family = GaugeMetricFamily(
            "depman_long_polls_waiting",
            "Long-polls subscribed and waiting for a wake-up, by what they wait for.",
            labels=["kind"],
        )
        for kind in WakeupKind:
            family.add_metric([kind.value], cache.hub.waiting(kind))
        yield family
        yield CounterMetricFamily(
            "depman_cache_notices_sent",
            "Changes this process committed and sent to the other replicas (NOTIFY payloads).",
            value=cache.notifier.sent if cache.notifier is not None else 0,
        )
        yield CounterMetricFamily(
            "depman_cache_notices_received",
            "Changes other replicas committed, applied to this process's memos.",
            value=cache.received_count,
        )
