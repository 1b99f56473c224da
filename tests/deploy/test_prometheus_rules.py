"""The shipped Prometheus config and alert rules: promtool validates them, promtool's
unit tests cover every alert, and every metric they use is one the agent exports."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import REPO, have
from tests.deploy.exported import agent_metrics_in, exported_metric_names

PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "rules" / "egress-agent.rules.yml"
TESTS = sorted((PROM / "tests").glob("*.yml"))

needs_promtool = pytest.mark.skipif(
    not have("promtool"), reason="promtool not installed (Debian package prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def alerts() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


@needs_promtool
def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    res = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert TESTS, "no rule unit tests in deploy/prometheus/tests"
    res = promtool("test", "rules", *map(str, TESTS))
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {str(a["alert"]) for a in alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


# alerts built on other exporters' series, and which series
NOT_AGENT_METRICS = {"EgressAgentDown": "up", "EgressAgentDiskWillFill": "node_filesystem_"}


def test_rules_use_only_metrics_the_agent_exports() -> None:
    exported = exported_metric_names()
    for rule in alerts():
        expr = str(rule["expr"])
        used = agent_metrics_in(expr)
        other = NOT_AGENT_METRICS.get(str(rule["alert"]))
        assert used or (other and other in expr), f"{rule['alert']} uses no agent metric"
        assert used <= exported, f"{rule['alert']}: unknown metrics {used - exported}"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for rule in alerts():
        labels = rule.get("labels") or {}
        ann = rule.get("annotations") or {}
        assert isinstance(labels, dict) and labels.get("severity") in ("critical", "warning")
        assert isinstance(ann, dict) and {"summary", "description", "runbook"} <= set(ann)
        anchor = str(ann["runbook"]).split("#")[1]
        assert anchor == str(rule["alert"]).lower()


def test_runbook_anchors_exist_in_the_operations_guide() -> None:
    doc = (REPO / "docs" / "operations.md").read_text().lower()
    for rule in alerts():
        assert f"### {str(rule['alert']).lower()}" in doc, f"no runbook for {rule['alert']}"


def test_the_process_start_time_the_rules_rely_on_is_exported() -> None:
    """The restart branch of the counter alerts needs `process_start_time_seconds`, which
    prometheus_client's default registry (the one /metrics serves) provides on Linux."""
    from prometheus_client import REGISTRY, generate_latest

    import agent.metrics  # noqa: F401  (the agent's metrics live in the default registry)

    assert "process_start_time_seconds" in RULES.read_text()
    assert b"\nprocess_start_time_seconds " in generate_latest(REGISTRY)
