"""The fleet dashboard's SQL as Grafana sends it to PostgreSQL.

deploy/grafana/dashboards/egress-agent-fleet.json holds raw SQL with Grafana's template
variables and macros. Grafana expands them in two steps, and so does `expand`:

1. the front end replaces dashboard variables; for a SQL data source a multi-value or
   include-All variable becomes a comma-joined list of single-quoted literals (quotes
   doubled), and "All" becomes the variable's `allValue`, quoted the same way;
2. the PostgreSQL back end (pkg/tsdb/grafana-postgresql-datasource/macros.go) replaces
   `$__interval`, then every `$__name(args)` macro: `$__timeFilter(c)` is
   `c BETWEEN '<from>' AND '<to>'` in RFC 3339 UTC with trailing zero fractions dropped,
   `$__timeGroup(c, 5m)` is `floor(extract(epoch from c)/300)*300`, `$__timeGroupAlias`
   adds `AS "time"`, `$__timeFrom()` / `$__timeTo()` the quoted bounds.

Used by tests/deploy/test_grafana_fleet.py (every panel against a real PostgreSQL) and
by bench/fleet.py (every panel timed at the simulated scale).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards/egress-agent-fleet.json"
)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    fmt: str  # "table" | "time_series"
    sql: str


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panel_queries(doc: dict[str, Any] | None = None) -> list[PanelQuery]:
    doc = doc or dashboard()
    out = []
    for p in doc["panels"]:
        for t in p.get("targets", []):
            out.append(PanelQuery(p["title"], t["refId"], t.get("format", "table"), t["rawSql"]))
    return out


def rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: no fraction when it is zero, no trailing zeros."""
    t = t.astimezone(UTC)
    frac = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def seconds_of(interval: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", interval.strip().strip("'"))
    if not m:
        raise ValueError(f"error parsing interval {interval}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _go_number(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(
    sql: str, variables: dict[str, list[str]], all_values: dict[str, str]
) -> str:
    """Step 1: dashboard variables, as the SQL data sources' `interpolateVariable` does."""
    for name in sorted(variables, key=len, reverse=True):
        values = variables[name]
        if values == ["$__all"]:
            values = [all_values[name]]
        text = ",".join(quote(v) for v in values)
        sql = sql.replace("${" + name + "}", text).replace("$" + name, text)
    return sql


def expand_macros(sql: str, start: datetime, end: datetime, interval: str) -> str:
    """Step 2: the PostgreSQL back end's `$__interval` and macros."""
    sql = sql.replace("$__interval_ms", _go_number(seconds_of(interval) * 1000))
    sql = sql.replace("$__interval", interval)

    def macro(m: re.Match[str]) -> str:
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            s = _go_number(seconds_of(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{s})*{s}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ValueError(f"unknown macro {name!r}")

    return _MACRO.sub(macro, sql)


def expand(
    sql: str,
    start: datetime,
    end: datetime,
    interval: str = "5m",
    variables: dict[str, list[str]] | None = None,
    doc: dict[str, Any] | None = None,
) -> str:
    """The SQL PostgreSQL receives for one panel, for a time range and variable selection."""
    doc = doc or dashboard()
    all_values = {
        v["name"]: v.get("allValue", "") for v in doc["templating"]["list"] if v.get("includeAll")
    }
    chosen = {"host": ["$__all"], **(variables or {})}
    out = expand_macros(interpolate_variables(sql, chosen, all_values), start, end, interval)
    if "$" in out:
        raise ValueError(f"a Grafana variable or macro is left in: {out!r}")
    return out
