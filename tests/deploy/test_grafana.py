"""The Grafana dashboard and its provisioning: every panel query is valid PromQL (parsed
by promtool, as a recording rule) over metrics the agent really exports, the data source
is a variable, and there is a host selector."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, have
from tests.deploy.exported import PROMETHEUS_OWN, agent_metrics_in, exported_metric_names

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "egress-agent.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# what Grafana puts in place of its variables before the query reaches Prometheus
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "6h",
    "${datasource}": "prom",
    "$host": ".*",
}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return [p for p in out if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def test_no_sharing_inputs_and_a_recent_schema() -> None:
    text = DASHBOARD.read_text()
    assert "__inputs" not in text and "${DS_" not in text  # grafana/grafana#10786
    assert dashboard()["schemaVersion"] >= 39
    assert dashboard()["uid"] == "egress-agent"


def test_datasource_and_host_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    host = variables["host"]
    assert host["type"] == "query" and host["multi"] and host["includeAll"]
    assert host["datasource"] == DATASOURCE
    m = re.fullmatch(r"label_values\((\w+), host\)", host["definition"])
    assert m and m.group(1) in exported_metric_names()


def test_every_panel_uses_the_datasource_variable_and_the_host_selector() -> None:
    for p in panels():
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", DATASOURCE) == DATASOURCE, p["title"]
            assert 'host=~"$host"' in t["expr"], f"{p['title']}: not filtered by $host"


def test_the_panels_a_security_lead_needs_are_there() -> None:
    text = " ".join(e for _t, e in exprs())
    for needle in (
        "egress_agent_outbound_bytes_total",  # egress by destination class and country
        "by (dest_class)",
        "by (country)",
        "egress_agent_incidents_opened_total",  # incidents by rule and severity
        "by (rule, severity)",
        "egress_agent_incidents_open",
        "by (pack, rule)",  # top rules
        "egress_agent_sensor_up",
        "egress_agent_queue_depth",
        "egress_agent_events_dropped_total",
        "egress_agent_store_write_seconds_bucket",
        "egress_agent_capture_drops_total",
        'up{job="egress-agent"',
        "egress_agent_service_bytes_total",  # bytes by known-service category (issue 16)
        "by (category)",
        "egress_agent_country_data_timestamp_seconds",  # age of the country table
    ):
        assert needle in text, needle


def test_queries_use_only_metrics_the_agent_exports() -> None:
    exported = exported_metric_names()
    for title, expr in exprs():
        used = agent_metrics_in(expr)
        assert used <= exported, f"{title}: unknown metrics {used - exported}"
        if not used:
            words = set(re.findall(r"\b([a-z_]+)\{", expr))
            assert words <= PROMETHEUS_OWN, f"{title}: {words}"


@pytest.mark.skipif(not have("promtool"), reason="promtool not installed (package prometheus)")
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:panel_{i}:check", "expr": to_promql(expr)}
        for i, (_title, expr) in enumerate(exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(rules)} rules found" in res.stdout


def test_promtool_check_catches_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a malformed expression is rejected."""
    if not have("promtool"):
        pytest.skip("promtool not installed (package prometheus)")
    path = tmp_path / "bad.yml"
    bad = {"record": "x:y:z", "expr": to_promql("sum by (host (rate(up[$__rate_interval]))")}
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [bad]}]}))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True)
    assert res.returncode != 0


def test_provisioning_files() -> None:
    dash = yaml.safe_load((GRAFANA / "provisioning/dashboards/egress-agent.yaml").read_text())
    assert dash["apiVersion"] == 1
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/egress-agent.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    all_panels = dashboard()["panels"]
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
