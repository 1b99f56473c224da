"""The fleet-store Grafana dashboard: every panel's SQL, expanded the way Grafana expands
it, runs against a real PostgreSQL that holds the schema from the migrations and known
rows, and returns the right answer (counts, sums, buckets, ordering, the host filter)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, insert, text

from agent.store.db import make_engine, upgrade
from agent.store.models import FlowRow, Host, IncidentRow
from bench.fleet_panels import DASHBOARD, dashboard, expand, panel_queries, rfc3339, seconds_of
from tests.conftest import REPO

GRAFANA = REPO / "deploy" / "grafana"
DS = {"type": "grafana-postgresql-datasource", "uid": "${datasource}"}
# a fixed "now" inside the last hour, so partitions created ahead for today hold the rows
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
START, END = NOW - timedelta(hours=6), NOW
HOSTS = {"h1": "lab-01", "h2": "lab-02", "h3": "lab-03"}


def _incident(
    n: int, host: str, rule: str, sev: str, status: str, opened: datetime
) -> dict[str, Any]:
    return {
        "uid": f"inc-{n}",
        "host_id": host,
        "kind": "exfiltration",
        "rule_id": rule,
        "pack": "p",
        "severity": sev,
        "status": status,
        "title": f"incident {n}",
        "dedup_key": f"k{n}",
        "opened_at": opened,
        "updated_at": opened,
        "evidence": {},
        "events_count": 1,
        "bytes_out": 0,
        "policy_version": "v1",
    }


def _flow(n: int, host: str, dest_class: str, bytes_out: int, end: datetime) -> dict[str, Any]:
    return {
        "uid": f"flow-{n}",
        "host_id": host,
        "start_time": end - timedelta(seconds=1),
        "end_time": end,
        "protocol": "tcp",
        "src_ip": "10.0.0.1",
        "src_port": 40000,
        "dst_ip": "203.0.113.1",
        "dst_port": 443,
        "bytes_out": bytes_out,
        "bytes_in": 0,
        "byte_source": "tcp_info",
        "dest_class": dest_class,
        "close_reason": "fin",
    }


INCIDENTS = [
    # n, host, rule, severity, status, minutes before NOW
    (1, "h1", "r.weights", "high", "open", 30),
    (2, "h1", "r.weights", "critical", "open", 200),
    (3, "h2", "r.source", "low", "acknowledged", 90),
    (4, "h2", "r.source", "medium", "closed", 95),
    (5, "h3", "r.weights", "medium", "open", 60 * 24 * 3),  # opened before the range
    (6, "h9", "r.secrets", "high", "open", 10),  # a host without a hosts row
    (7, "h1", "r.source", "high", "closed", 31),
]
FLOWS = [
    # n, host, class, bytes_out, minutes before NOW
    (1, "h1", "foreign", 1000, 20),
    (2, "h1", "foreign", 500, 21),
    (3, "h1", "domestic", 99999, 22),  # not abroad
    (4, "h2", "foreign", 7000, 300),
    (5, "h2", "foreign", 3, 60 * 24 * 2),  # outside the range
    (6, "h3", "internal", 123, 5),
]


@pytest.fixture
def store(pg_url: str) -> Engine:
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.begin() as c:
        c.execute(
            insert(Host),
            [
                {"id": i, "hostname": n, "agent_version": "t", "first_seen": NOW, "last_seen": NOW}
                for i, n in HOSTS.items()
            ],
        )
        c.execute(
            insert(IncidentRow),
            [
                _incident(n, h, r, s, st, NOW - timedelta(minutes=m))
                for n, h, r, s, st, m in INCIDENTS
            ],
        )
        c.execute(
            insert(FlowRow),
            [_flow(n, h, d, b, NOW - timedelta(minutes=m)) for n, h, d, b, m in FLOWS],
        )
    return engine


def run(engine: Engine, title: str, hosts: list[str] | None = None) -> list[dict[str, Any]]:
    (q,) = [q for q in panel_queries() if q.panel == title]
    sql = expand(q.sql, START, END, "1h", {"host": hosts or ["$__all"]})
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(text(sql.replace(":", r"\:")))]


def name(host: str) -> str:
    return HOSTS.get(host, host)


def test_open_incidents_table(store: Engine) -> None:
    rows = run(store, "Open incidents")
    assert [(r["severity"], r["host"], r["rule"], r["title"], r["status"]) for r in rows] == [
        ("critical", "lab-01", "r.weights", "incident 2", "open"),
        ("high", "lab-01", "r.weights", "incident 1", "open"),  # oldest first within a severity
        ("high", "h9", "r.secrets", "incident 6", "open"),
        ("medium", "lab-03", "r.weights", "incident 5", "open"),  # open, however old
        ("low", "lab-02", "r.source", "incident 3", "acknowledged"),
    ]
    ages = {r["title"]: float(r["age"]) for r in rows}
    # age counts from opened_at to the database's now(); the rows were made minutes ago
    lag = (datetime.now(UTC) - NOW).total_seconds()
    assert 200 * 60 <= ages["incident 2"] <= 200 * 60 + lag + 60
    assert 3 * 86400 <= ages["incident 5"] <= 3 * 86400 + lag + 60
    only = run(store, "Open incidents", ["lab-02", "lab-03"])
    assert {r["host"] for r in only} == {"lab-02", "lab-03"}


def _series(rows: list[dict[str, Any]]) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = defaultdict(dict)
    times = [float(r["time"]) for r in rows]
    assert times == sorted(times), "Grafana needs time series sorted by time"
    for r in rows:
        t = float(r["time"])
        assert t % 3600 == 0, "buckets of $__interval (1h)"
        out[str(r["metric"])][t] = float(r["value"])
    return out


def _expected(items: list[tuple[str, datetime, float]]) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for key, t, v in items:
        if START <= t <= END:
            out[key][float(int(t.timestamp()) // 3600 * 3600)] += v
    return {k: dict(v) for k, v in out.items()}


def test_incidents_per_host(store: Engine) -> None:
    want = _expected([(name(h), NOW - timedelta(minutes=m), 1) for _, h, _, _, _, m in INCIDENTS])
    assert _series(run(store, "Incidents per host")) == want
    assert set(_series(run(store, "Incidents per host", ["lab-01"]))) == {"lab-01"}


def test_incidents_per_rule(store: Engine) -> None:
    want = _expected([(r, NOW - timedelta(minutes=m), 1) for _, _, r, _, _, m in INCIDENTS])
    assert _series(run(store, "Incidents per rule")) == want
    counts = Counter(r for _, h, r, _, _, m in INCIDENTS if h == "h2" and m < 360)
    got = _series(run(store, "Incidents per rule", ["lab-02"]))
    assert {k: sum(v.values()) for k, v in got.items()} == counts


def test_bytes_abroad_per_host(store: Engine) -> None:
    want = _expected(
        [(name(h), NOW - timedelta(minutes=m), b) for _, h, d, b, m in FLOWS if d == "foreign"]
    )
    assert _series(run(store, "Bytes abroad per host")) == want
    assert {k: sum(v.values()) for k, v in want.items()} == {"lab-01": 1500, "lab-02": 7000}


def test_bytes_abroad_totals(store: Engine) -> None:
    rows = run(store, "Bytes abroad per host (time range)")
    assert [(r["host"], int(r["bytes abroad"])) for r in rows] == [
        ("lab-02", 7000),
        ("lab-01", 1500),
    ]
    assert run(store, "Bytes abroad per host (time range)", ["lab-03"]) == []


def test_every_panel_is_checked_and_runs(store: Engine) -> None:
    checked = {
        "Open incidents",
        "Incidents per host",
        "Incidents per rule",
        "Bytes abroad per host",
        "Bytes abroad per host (time range)",
    }
    assert {q.panel for q in panel_queries()} == checked
    for q in panel_queries():
        assert q.fmt in ("table", "time_series"), q.panel
        if q.fmt == "time_series":
            assert '"time"' in expand(q.sql, START, END), f"{q.panel}: no time column"
        run(store, q.panel, ["lab-01", "it's"])  # a quote in a host name stays a literal


def test_host_variable_query_runs(store: Engine) -> None:
    (host,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "host"]
    assert host["multi"] and host["includeAll"] and host["allValue"] == "__all"
    with store.connect() as c:
        assert [r[0] for r in c.execute(text(host["query"]))] == sorted(HOSTS.values())


def test_macros_expand_as_grafana_does() -> None:
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    t1 = datetime(2026, 1, 2, 4, 4, 5, 250000, tzinfo=UTC)
    assert rfc3339(t0) == "2026-01-02T03:04:05Z" and rfc3339(t1) == "2026-01-02T04:04:05.25Z"
    assert seconds_of("5m") == 300 and seconds_of("1h") == 3600
    sql = (
        "SELECT $__timeGroupAlias(t, $__interval), x FROM y WHERE $__timeFilter(t) AND h IN ($host)"
    )
    assert expand(sql, t0, t1, "5m", {"host": ["a", "b'c"]}) == (
        'SELECT floor(extract(epoch from t)/300)*300 AS "time", x FROM y WHERE '
        "t BETWEEN '2026-01-02T03:04:05Z' AND '2026-01-02T04:04:05.25Z' AND h IN ('a','b''c')"
    )
    assert expand("h IN ($host)", t0, t1) == "h IN ('__all')"
    with pytest.raises(ValueError):
        expand("$__nosuch(t)", t0, t1)


def test_dashboard_layout_and_provisioning() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "egress-agent-fleet" and doc["schemaVersion"] >= 39
    assert "__inputs" not in DASHBOARD.read_text()
    (ds,) = [v for v in doc["templating"]["list"] if v["name"] == "datasource"]
    assert ds["type"] == "datasource" and ds["query"] == DS["type"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        assert p["datasource"] == DS and all(t["datasource"] == DS for t in p["targets"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, p["title"]
        taken |= cells
    src = yaml.safe_load((GRAFANA / "provisioning/datasources/egress-agent-fleet.yaml").read_text())
    (source,) = src["datasources"]
    assert source["type"] == DS["type"] and source["jsonData"]["database"]
    dash = yaml.safe_load((GRAFANA / "provisioning/dashboards/egress-agent.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file"  # the folder it reads holds both dashboards
