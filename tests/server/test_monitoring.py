"""docs/monitoring/: the alert rules load in Prometheus and fire on what they name,
the Grafana dashboard has what an import needs, and both query metrics the server has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from tests.support.server import RunningServer

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
RULES = MONITORING / "depman-alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Counted by the source resolver, not declared with the others.
COUNTED_ELSEWHERE = {"depman_bad_sources_total"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian: the prometheus package)")
    return subprocess.run(
        [tool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )


def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_fires_on_the_series_it_is_for() -> None:
    result = promtool("test", "rules", "depman-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = (MONITORING / "depman-alerts.test.yml").read_text()
    tested = set(re.findall(r"alertname: (\w+)", tests))
    groups = yaml.safe_load(RULES.read_text())["groups"]
    declared = {rule["alert"] for group in groups for rule in group["rules"]}
    assert declared <= tested


def test_the_dashboard_has_what_a_grafana_import_needs() -> None:
    schema = json.loads((MONITORING / "grafana-dashboard.schema.json").read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema_rs.validator_for(schema).validate(dashboard)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def exposed_names(text: str) -> set[str]:
    """Every sample name a scrape can carry, from its `# TYPE` lines."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "counter":
            names |= {name, name + "_total"}
        elif kind == "histogram":
            names |= {name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("server_backend", ["sqlite"], indirect=True)
def test_the_dashboard_and_rules_query_metrics_the_server_exposes(server: RunningServer) -> None:
    status, text = server.request("GET", "/metrics")
    assert status == 200
    exposed = exposed_names(text) | COUNTED_ELSEWHERE
    queried = set(re.findall(r"\bdepman_\w+", DASHBOARD.read_text() + RULES.read_text()))
    assert queried - exposed == set()
    assert "depman_instance_disk_free_bytes" in queried
