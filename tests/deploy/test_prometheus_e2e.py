"""End to end: a real Prometheus scrapes a real agent with the shipped scrape config and
evaluates the shipped alert rules every second; alerts are read from its HTTP API.

- A high-severity incident, made by the agent's real file sensor, classifier, policy
  and correlation (a document carrying a marker keyword written to a path configured
  as removable media, judged by a site pack rule of severity high), makes
  EgressAgentHighSeverityIncident fire — with the shipped rules unchanged.
- A real 150 MB upload to a peer namespace configured as foreign, counted by the network
  sensor and judged by a site rule, fires EgressAgentControlledEgressForeign and
  EgressAgentUnusualForeignUpload.
- A store held locked while a load generator runs makes the agent drop (and count)
  events: EgressAgentEventsDropped fires.
- A broken site pack reloaded with SIGHUP fires EgressAgentPolicyReloadFailing, and
  fixing it resolves the alert.
- A TLS + basic-auth agent is scraped with the documented scrape settings.
- A sensor that cannot start fires EgressAgentSensorDown, and a stopped agent fires
  EgressAgentDown (these rules carry `for:` durations of minutes; the copy loaded here has
  them cut to one second, nothing else changed). Every dashboard query runs on the live
  Prometheus without error.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, have, is_root, wait_until
from tests.deploy.promserver import RULES, rules_with_short_for
from tests.deploy.test_grafana import exprs as dashboard_exprs
from tests.deploy.test_grafana import to_promql
from tests.sensors.network.peers import Sink
from tests.sensors.network.rig import free_port_in, make_rig, unavailable_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not have("prometheus"), reason="prometheus not installed (Debian package prometheus)"
    ),
]

MARKER = "nightingale-7 drill marker"

SITE_PACK = f"""\
pack:
  id: e2e-drill
  name: End-to-end drill
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{{title: deploy e2e test}}]
categories:
  - code: E2E-DRILL-MARKER
    name_en: Drill marker for the Prometheus end-to-end test
    control: restricted
    keywords_en: ["{MARKER}"]
    min_count: 1
    corroborate: false  # a project code name is an identifier: no technical context needed
rules:
  - id: e2e-drill-marker-removable
    description: A file carrying the drill marker written to removable media
    condition:
      all:
        - {{field: channel, eq: removable}}
        - {{field: categories, contains: E2E-DRILL-MARKER}}
    severity: high
    effective_from: 2020-01-01
    action: alert
    tests:
      - name: marker on usb
        facts: {{event: file, action: written, channel: removable, kinds: [document],
                 matches: {{E2E-DRILL-MARKER: 1}}}}
        expect: decision
        severity: high
      - name: marker on local disk
        facts: {{event: file, action: written, channel: local, kinds: [document],
                 matches: {{E2E-DRILL-MARKER: 1}}}}
        expect: none
"""


def _until_series(prom: Any, query: str, what: str, timeout: float, why: Callable[[], Any]) -> Any:
    """Prometheus's first non-empty answer to `query`, waited for as `wait_until` does."""
    return wait_until(lambda: prom.api("query", query=query)["result"], what, timeout, why=why)


def _until_firing(prom: Any, alert: str, timeout: float, log: Callable[[], str]) -> Any:
    """The firing `alert`s once there is one; else all alerts and `log()` say why not."""
    return wait_until(
        lambda: prom.alerts(alert),
        f"{alert} firing",
        timeout,
        why=lambda: json.dumps(prom.api("alerts")) + log(),
    )


def test_high_severity_incident_fires_the_shipped_alert(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, prometheus: Any
) -> None:
    assert "for" not in next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "EgressAgentHighSeverityIncident"
    ), "the incident alert must page at once"
    usb = tmp_path / "usb"
    usb.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "drill.yaml").write_text(SITE_PACK)
    agent_config["sensors"] = {"enabled": ["files"]}
    agent_config["files"] = {"roots": [str(usb)], "removable": [str(usb)], "follow_mounts": False}
    agent_config["policies"] = {"paths": [str(site)]}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    wait_until(
        lambda: agent.metric("egress_agent_policy_last_reload_success") == 1,
        "policy loaded",
        60,
        why=agent.stderr,
    )
    prom = prometheus(agent_config["metrics"]["listen"])
    _until_series(prom, 'up{job="egress-agent"} == 1', "first scrape", 30, why=prom.tail)
    assert not prom.alerts("EgressAgentHighSeverityIncident", "firing")

    # the real thing: a document with the marker lands on the "USB stick"
    (usb / "quarterly-report.txt").write_text(
        f"Internal design notes.\nProject {MARKER}: do not distribute.\n" * 20
    )
    labels = {"rule": "e2e-drill-marker-removable", "severity": "high"}
    wait_until(
        lambda: agent.metric("egress_agent_incidents_opened_total", labels),
        "the agent opens a high-severity incident",
        60,
        why=agent.stderr,
    )
    (alert,) = _until_firing(prom, "EgressAgentHighSeverityIncident", 60, log=prom.tail)
    assert alert["labels"]["rule"] == "e2e-drill-marker-removable"
    assert alert["labels"]["incident_severity"] == "high"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["host"] == "127.0.0.1"  # from the shipped relabelling
    assert "high incident opened on 127.0.0.1" in alert["annotations"]["summary"]
    assert agent.stop() == 0


def test_sensor_down_and_agent_down_fire(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, prometheus: Any
) -> None:
    agent_config["sensors"] = {"enabled": ["network"]}
    agent_config["network"] = {"interfaces": ["e2e-missing0"]}  # no such interface
    agent = run_agent(agent_config)
    agent.wait_metrics()
    wait_until(
        lambda: agent.metric("egress_agent_sensor_up", {"sensor": "network"}) == 0,
        "the network sensor reported down",
        30,
        why=agent.stderr,
    )
    prom = prometheus(agent_config["metrics"]["listen"], rules_with_short_for(tmp_path))

    (alert,) = _until_firing(prom, "EgressAgentSensorDown", 60, log=prom.tail)
    assert alert["labels"]["sensor"] == "network" and alert["labels"]["host"] == "127.0.0.1"
    assert not prom.alerts("EgressAgentDown")

    # every dashboard query runs on the live data without an error
    for title, expr in dashboard_exprs():
        prom.api("query", query=to_promql(expr))  # asserts status == success
        assert title
    assert (
        prom.api("query", query=to_promql('sum(up{job="egress-agent", host=~"$host"})'))["result"][
            0
        ]["value"][1]
        == "1"
    )

    assert agent.stop() == 0
    (down,) = _until_firing(prom, "EgressAgentDown", 60, log=prom.tail)
    assert down["labels"]["instance"] == agent_config["metrics"]["listen"]


def test_prometheus_scrapes_a_tls_and_password_protected_agent(
    tmp_path: Path,
    agent_config: dict[str, Any],
    run_agent: Any,
    prometheus: Any,
    cert: tuple[Path, Path],
) -> None:
    """The commented `scheme`/`tls_config`/`basic_auth` of the shipped scrape config work
    against an agent with metrics.tls_* and metrics.basic_auth_* set; a wrong password
    leaves the target down."""
    password = "correct horse battery staple"
    agent_config["metrics"].update(
        tls_cert=str(cert[0]),
        tls_key=str(cert[1]),
        basic_auth_user="prometheus",
        basic_auth_password_sha256=hashlib.sha256(password.encode()).hexdigest(),
    )
    run_agent(agent_config)
    secret = tmp_path / "egress-agent.password"
    secret.write_text(password)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("guess")
    target = agent_config["metrics"]["listen"]
    tls = {"scheme": "https", "tls_config": {"ca_file": str(cert[0])}}
    good = prometheus(
        target, **tls, basic_auth={"username": "prometheus", "password_file": str(secret)}
    )
    bad = prometheus(
        target, **tls, basic_auth={"username": "prometheus", "password_file": str(wrong)}
    )
    wait_until(
        lambda: good.api("query", query='up{job="egress-agent"} == 1')["result"],
        "an authenticated HTTPS scrape",
        30,
        why=lambda: json.dumps(good.api("targets")),
    )
    targets = wait_until(
        lambda: [t for t in bad.api("targets")["activeTargets"] if t["health"] == "down"],
        "the wrong password fails",
        30,
        why=lambda: json.dumps(bad.api("targets")),
    )
    assert "401" in targets[0]["lastError"]


FLOW_PACK = """\
pack:
  id: e2e-egress
  name: End-to-end drill, network
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{title: deploy e2e test}]
rules:
  - id: e2e-bulk-upload-abroad
    description: More than 10 MB in one flow to a foreign destination
    condition:
      all:
        - {field: event, eq: flow}
        - {field: dest_class, eq: foreign}
        - {field: bytes_out, ge: 10000000}
    severity: high
    effective_from: 2020-01-01
    action: alert
    tests:
      - name: big upload abroad
        facts: {event: flow, dest_class: foreign, bytes_out: 150000000}
        expect: decision
        severity: high
      - name: big upload inside
        facts: {event: flow, dest_class: internal, bytes_out: 150000000}
        expect: none
"""

UPLOAD = """\
import socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"\\0" * (1 << 20)
with socket.create_connection((host, port)) as s:
    sent = 0
    while sent < total:
        s.sendall(chunk[: total - sent])
        sent += min(len(chunk), total - sent)
    assert s.recv(1) == b"k"
"""


@pytest.mark.netns
@pytest.mark.skipif(not is_root(), reason="needs root for network namespaces")
def test_controlled_egress_abroad_and_an_unusual_upload_fire(
    tmp_path: Path, prometheus: Any
) -> None:
    """A real 150 MB TCP upload from the agent's namespace to a peer configured as
    foreign: the network sensor counts it, a policy rule judges the flow, and Prometheus
    fires EgressAgentControlledEgressForeign (shipped rule, no `for`) and
    EgressAgentUnusualForeignUpload (its `for: 1m` cut to 1s)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    total = 150_000_000
    with make_rig() as rig:
        site = tmp_path / "site"
        site.mkdir()
        (site / "egress.yaml").write_text(FLOW_PACK)
        countries = tmp_path / "countries.csv"
        countries.write_text(f"network,country\n{rig.peer_v4}/32,US\n")
        listen = f"127.0.0.1:{free_port_in(rig, rig.sender_ns)}"
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "agent": {"state_dir": str(tmp_path / "state")},
                    "metrics": {"listen": listen},
                    "sensors": {"enabled": ["network"]},
                    "network": {
                        "interfaces": [rig.sender_if],
                        "internal_networks": ["192.168.0.0/16"],
                        "foreign_networks": [f"{rig.peer_v4}/32"],
                        "country_db": str(countries),
                    },
                    "policies": {"paths": [str(site)]},
                }
            )
        )
        log = tmp_path / "agent.stderr"
        agent = rig.exec(
            rig.sender_ns, sys.executable, "-m", "agent", "--config", str(cfg), "run",
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        sink = Sink(ack_after=total)
        prom = None
        try:
            prom = prometheus(listen, rules_with_short_for(tmp_path), netns=(rig, rig.sender_ns))
            _until_series(
                prom,
                'egress_agent_sensor_up{sensor="network"} == 1',
                "the agent scraped with its network sensor up",
                60,
                why=lambda: log.read_text()[-3000:] + prom.tail(),
            )
            rig.run_in(rig.peer_ns, sink.serve)
            assert sink.ready.wait(5)
            script = tmp_path / "upload.py"
            script.write_text(UPLOAD)
            up = rig.exec(
                rig.sender_ns, sys.executable, str(script), rig.peer_v4, str(sink.port), str(total)
            )
            assert up.wait(60) == 0

            def ours() -> list[dict[str, Any]]:
                return [
                    a
                    for a in prom.alerts("EgressAgentControlledEgressForeign")
                    if a["labels"]["rule"] == "e2e-bulk-upload-abroad"
                ]

            (egress,) = wait_until(
                ours,
                "EgressAgentControlledEgressForeign firing",
                60,
                why=lambda: json.dumps(prom.api("alerts")) + log.read_text()[-3000:],
            )
            assert egress["labels"]["decision_severity"] == "high"
            assert egress["labels"]["pack"] == "e2e-egress"
            (upload,) = _until_firing(
                prom,
                "EgressAgentUnusualForeignUpload",
                60,
                log=lambda: json.dumps(
                    prom.api("query", query="egress_agent_outbound_bytes_total")["result"]
                ),
            )
            assert upload["labels"]["host"] == "127.0.0.1"
            sent = prom.api(
                "query", query='sum(egress_agent_outbound_bytes_total{dest_class="foreign"})'
            )["result"]
            assert float(sent[0]["value"][1]) >= total
        finally:
            sink.stop()
            if prom is not None:
                prom.stop()
            agent.terminate()
            agent.wait(60)


def test_events_dropped_fires_when_the_store_is_stuck(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, prometheus: Any
) -> None:
    """A load generator feeds a small pipeline while another process holds the SQLite
    store locked: the queues fill, the sensor's puts time out and events are dropped and
    counted — and EgressAgentEventsDropped (shipped rule, no `for`) fires."""
    agent_config["sensors"] = {"enabled": ["synthetic"], "synthetic_count": 1_000_000,
                               "synthetic_rate": 2000}  # fmt: skip
    agent_config["database"] = {"queue_size": 50, "batch_size": 50}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    prom = prometheus(agent_config["metrics"]["listen"])
    wait_until(
        lambda: (agent.metric("egress_agent_store_rows_written_total") or 0) > 0,
        "events stored",
        30,
        why=agent.stderr,
    )
    db = Path(agent_config["agent"]["state_dir"]) / "agent.db"
    release = threading.Event()

    def hold_lock() -> None:
        with sqlite3.connect(db, timeout=30) as c:
            c.execute("BEGIN EXCLUSIVE")
            release.wait(30)
            c.rollback()

    locker = threading.Thread(target=hold_lock)
    locker.start()
    try:
        (alert,) = _until_firing(prom, "EgressAgentEventsDropped", 40, log=agent.stderr)
        assert alert["labels"]["reason"] == "queue_full"
        assert alert["labels"]["severity"] == "critical"
    finally:
        release.set()
        locker.join()
    assert agent.stop() == 0


def test_policy_reload_failing_fires(
    tmp_path: Path, agent_config: dict[str, Any], run_agent: Any, prometheus: Any
) -> None:
    """A site pack broken on disk and a SIGHUP: the agent keeps its last good policy,
    reports the failed reload, and EgressAgentPolicyReloadFailing fires (its `for: 1m`
    cut to 1s); fixing the pack resolves it."""
    site = tmp_path / "site"
    site.mkdir()
    pack = site / "drill.yaml"
    pack.write_text(SITE_PACK)
    agent_config["policies"] = {"paths": [str(site)], "watch_interval": 0}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    prom = prometheus(agent_config["metrics"]["listen"], rules_with_short_for(tmp_path))
    _until_series(
        prom,
        "egress_agent_policy_last_reload_success == 1",
        "the policy loaded and scraped",
        60,
        why=agent.stderr,
    )
    assert not prom.alerts("EgressAgentPolicyReloadFailing", "firing")

    pack.write_text(SITE_PACK.replace("action: alert", "action: shred"))
    agent.proc.send_signal(signal.SIGHUP)
    (alert,) = _until_firing(prom, "EgressAgentPolicyReloadFailing", 60, log=agent.stderr)
    assert alert["labels"]["team"] == "security"

    pack.write_text(SITE_PACK)
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: not prom.alerts("EgressAgentPolicyReloadFailing", "firing"),
        "the alert resolved",
        60,
        why=lambda: json.dumps(prom.api("alerts")),
    )
    assert agent.stop() == 0
