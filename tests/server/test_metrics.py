"""/metrics as Prometheus reads it: counters that never go down across a runner's
workers, and per-instance gauges from the database."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from depman.core.clock import utcnow
from depman.server.fleet_metrics import FLEET_FAMILY_SAMPLE_NAMES, FleetFigures
from tests.server.fleet import dep_doc, make_fleet
from tests.support.server import RunningServer, postgres_database, run_server
from tests.support.wait import wait_until

SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", re.M)


def samples(server: RunningServer, names: Iterable[str] = ()) -> dict[str, float]:
    """Every sample of one scrape, keyed by name and labels (`names`: the scrape's `name[]`)."""
    query = urllib.parse.urlencode([("name[]", name) for name in names])
    status, text = server.request("GET", "/metrics" + (f"?{query}" if query else ""))
    assert status == 200
    return {name + labels: float(value) for name, labels, value in SAMPLE.findall(text or "")}


def monotonic_series(scrape: dict[str, float]) -> dict[str, float]:
    """The samples of counters and histograms: what Prometheus treats as never falling."""
    return {
        key: value
        for key, value in scrape.items()
        if re.match(r"[\w:]+_(total|count|sum|bucket)(\{|$)", key)
        and not key.startswith("depman_instance")  # gauges of the fleet, not counters
    }


def wait_for_sample(server: RunningServer, key: str, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        scrape = samples(server)
        if key in scrape:
            return scrape[key]
        assert time.monotonic() < deadline, f"{key} never appeared in /metrics"
        time.sleep(0.2)


@pytest.mark.postgres
def test_scrapes_of_several_workers_never_see_a_counter_go_down(tmp_path: Path) -> None:
    env = {"DEPMAN_WORKERS": "2", "DEPMAN_API_PORT": "0", "DEPMAN_HEARTBEAT_FLUSH_SECONDS": "0"}
    with postgres_database() as url, run_server(url, extra_env=env, cwd=tmp_path) as server:
        fleet = make_fleet(server)
        agent = fleet.register(fleet.add_instance("gpu"))
        status, job = fleet.submit(["b", "c"])
        assert status == 200 and job["instanceId"] == agent.instance_id, job
        agent.free_bytes = 123_456_789
        downloads = [
            {"depId": fleet.deps["b"], "downloadedBytes": 10, "throughputBytesPerSec": 1000.0},
            {"depId": fleet.deps["c"], "bytesDone": 10, "bytesPerSecond": 500},  # old names
        ]
        status, _ = agent.heartbeat(activeDownloads=downloads, dynamicBytesUsed=4096)
        assert status == 200
        # The fleet gauges come from the database: every process answers them alike.
        label = f'{{instance_id="{agent.instance_id}"}}'
        key = f"depman_instance_disk_free_bytes{label}"
        assert wait_for_sample(server, key) == 123_456_789
        api = server.on_api_port()
        for scrape in (samples(server), samples(api)):
            assert scrape[key] == 123_456_789
            assert scrape[f"depman_instance_disk_total_bytes{label}"] == 2 * 10**12
            assert scrape[f"depman_instance_dynamic_cache_bytes{label}"] == 4096
            assert scrape[f"depman_instance_queue_depth{label}"] == 2  # the job's two downloads
            assert scrape[f"depman_instance_download_rate_bytes_per_second{label}"] == 1500
            assert scrape[f"depman_instance_live{label}"] == 1
            assert scrape[f"depman_instance_lost{label}"] == 0

        previous: dict[str, float] = {}
        for _ in range(12):
            # Traffic between scrapes lands on either worker and counts there.
            for _ in range(3):
                assert agent.heartbeat()[0] == 200
                assert server.request("GET", "/api/admin/no-such-route")[0] in (401, 404)
            scrape = monotonic_series(samples(server))
            for series, value in previous.items():
                assert scrape.get(series, 0.0) >= value, (series, value, scrape.get(series))
            previous = scrape
        # The heartbeats of every worker are in the one sum, in a scrape naming its series too.
        counts = "depman_http_request_duration_seconds_count"
        heartbeats = sum(
            value
            for series, value in previous.items()
            if series.startswith(counts) and "heartbeat" in series
        )
        assert heartbeats >= 37
        named = samples(api, [counts])
        assert named and all(key.startswith(counts + "{") for key in named), named
        assert sum(v for key, v in named.items() if "heartbeat" in key) >= heartbeats


def test_every_instance_gauge_parses_as_prometheus_reads_it(server: RunningServer) -> None:
    """The per-instance gauges, written as text by hand, parse with prometheus_client's
    own parser: an instance id with a quote in it comes back whole, with its figures."""
    fleet = make_fleet(server)
    instance_id = f'gpu"{fleet.server_type}'
    agent = fleet.register(instance_id)
    agent.free_bytes = 987_654_321
    assert agent.heartbeat(dynamicBytesUsed=2048)[0] == 200
    status, text = server.request("GET", "/metrics")
    assert status == 200
    found: dict[str, float] = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            if sample.labels.get("instance_id") == instance_id:
                found[sample.name] = sample.value
    assert found["depman_instance_disk_free_bytes"] == 987_654_321
    assert found["depman_instance_dynamic_cache_bytes"] == 2048
    assert found["depman_instance_live"] == 1
    assert found["depman_instance_lost"] == 0
    assert found["depman_instance_last_heartbeat_timestamp_seconds"] > time.time() - 600
    assert {"depman_instances", "depman_jobs", "depman_http_request_duration_seconds"} <= names


def test_a_scrape_naming_its_series_gets_those_alone(server: RunningServer) -> None:
    """`name[]` restricts a scrape to those sample names, as prometheus_client's own
    handlers do: a fast scrape job for the process figures leaves out the fleet's
    per-instance gauges (and their read of every instance row), a slow one asks for them."""
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("gpu"))
    assert agent.heartbeat()[0] == 200
    live = f'depman_instance_live{{instance_id="{agent.instance_id}"}}'

    process = samples(server, ["depman_http_request_duration_seconds_count",
                               "depman_agent_memo_answers_total"])
    assert process and {key.split("{")[0] for key in process} <= {
        "depman_http_request_duration_seconds_count", "depman_agent_memo_answers_total"}
    assert any("heartbeat" in key for key in process), process

    gauges = samples(server, ["depman_instance_live", "depman_instances"])
    assert gauges[live] == 1
    assert gauges["depman_instances"] >= 1
    assert {key.split("{")[0] for key in gauges} == {"depman_instance_live", "depman_instances"}

    assert samples(server, ["no_such_series"]) == {}
    assert live in samples(server)  # without name[], every series


def test_the_fleet_families_are_all_named_where_a_restricted_scrape_looks() -> None:
    """A scrape whose `name[]` misses every name in FLEET_SAMPLE_NAMES skips the fleet's
    read: a family added without its name there would vanish from such scrapes."""
    figures = FleetFigures(rows=[], depths={}, items={}, job_counts={},
                            source_bytes={"mirror": 1, "upstream": 2}, cutoff=utcnow())
    produced = {sample.name for family in figures.families() for sample in family.samples}
    assert produced == FLEET_FAMILY_SAMPLE_NAMES


FLEET_DROPS = ("everything", "instances", "heartbeats")


def fleet_drops(server: RunningServer) -> dict[str, float]:
    scrape = samples(server)
    return {s: scrape[f'depman_memo_fleet_drops_total{{scope="{s}"}}'] for s in FLEET_DROPS}


@pytest.mark.own_server
def test_an_agent_at_work_drops_no_memo_fleet_wide_and_a_catalog_change_is_counted(
    server: RunningServer,
) -> None:
    """Register, heartbeat, poll, a job's download running, backing off after a 503 and
    woken by the sweep, then succeeded: each write names its instance, and no memo of
    any other instance goes (/metrics counts the changes that drop every instance's).
    A catalog change drops every heartbeat memo, and is counted so."""
    fleet = make_fleet(server)
    bystander = fleet.register(fleet.add_instance("bystander"))
    before = fleet_drops(server)
    agent = fleet.register(fleet.add_instance("worker"))
    status, _ = fleet.submit(["b"], jobId=f"j-{agent.instance_id}")
    assert status in (200, 201)
    # The job went to one of the two; its agent takes the item.
    for candidate in (agent, bystander):
        items = candidate.poll()[1]["items"]
        if items:
            worker, (item,) = candidate, items
            break
    else:
        raise AssertionError("the job's download was queued nowhere")
    assert worker.status(item, "running")[0] == 200
    error = "HTTP 503 from huggingface.co; next attempt in 1s"
    assert worker.status(item, "retrying", error)[0] == 200
    # The sweep wakes the item once its backoff is over; the agent takes it again.
    again = wait_until(lambda: worker.poll()[1]["items"], 30, "the item woken after its backoff")
    assert worker.status(again[0], "running")[0] == 200
    assert worker.status(again[0], "succeeded")[0] == 200
    worker.installed_dynamic = [item["depId"]]
    assert worker.heartbeat()[0] == 200
    assert fleet_drops(server) == before
    status, body = server.admin(
        "PUT", f"/admin/deps/{fleet.deps['c']}", dep_doc(fleet.deps["c"], 4000, "dynamic")
    )
    assert status == 200, body
    after = fleet_drops(server)
    assert after["heartbeats"] == before["heartbeats"] + 1
    assert (after["instances"], after["everything"]) == (before["instances"], before["everything"])
