"""Read queries for the CLI and analysts: events, status counts. No writes here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.orm import Session

from agent.store import rollup
from agent.store.models import (
    Artefact,
    DecisionRow,
    FileEventRow,
    FlowRow,
    Host,
    IncidentRow,
)
from agent.store.schema_map import FILE_LISTED, FLOW_LISTED


@dataclass(frozen=True)
class StoreCounts:
    hosts: int
    file_events: int
    flows: int
    artefacts: int
    decisions: int
    incidents: int
    last_file_event: datetime | None
    last_flow: datetime | None


_Rollup = dict[str, dict[str, tuple[int, datetime | None]]]


def _rollup(conn: Connection, host_id: str | None = None) -> _Rollup | None:
    """host -> table -> (rows, newest event time) from `event_rollup`, where it exists.

    A PostgreSQL store at 0007 or later keeps that table (agent/store/rollup.py), so the
    counts cost a read of hosts × days rows, not of the events; elsewhere (SQLite, an
    older schema) this is None and the rows are counted.
    """
    if conn.dialect.name != "postgresql" or not rollup.installed(conn):
        return None
    q = (
        f"SELECT host_id, table_name, sum(n_rows), max(last_time) FROM {rollup.TABLE}"
        + (" WHERE host_id = :h" if host_id is not None else "")
        + " GROUP BY host_id, table_name"
    )
    out: _Rollup = {}
    for h, table, n, last in conn.execute(text(q), {"h": host_id}):
        out.setdefault(h, {})[table] = (int(n), last)
    return out


def _total(rolled: _Rollup, table: str) -> tuple[int, datetime | None]:
    lasts = [last for t in rolled.values() if (last := t.get(table, (0, None))[1]) is not None]
    return sum(t.get(table, (0, None))[0] for t in rolled.values()), max(lasts, default=None)


def counts(engine: Engine, host_id: str | None = None) -> StoreCounts:
    def n(model: Any) -> int:
        q = select(func.count()).select_from(model)
        if host_id is not None and hasattr(model, "host_id"):
            q = q.where(model.host_id == host_id)
        return int(conn.execute(q).scalar_one())

    with engine.connect() as conn:
        rolled = _rollup(conn, host_id)
        if rolled is not None:
            fe, fl, de = (_total(rolled, t) for t in ("file_events", "flows", "decisions"))
            return StoreCounts(
                hosts=n(Host),
                file_events=fe[0],
                flows=fl[0],
                artefacts=n(Artefact),
                decisions=de[0],
                incidents=n(IncidentRow),
                last_file_event=as_utc(fe[1]),
                last_flow=as_utc(fl[1]),
            )
        last_fe = select(func.max(FileEventRow.time))
        last_fl = select(func.max(FlowRow.end_time))
        if host_id is not None:
            last_fe = last_fe.where(FileEventRow.host_id == host_id)
            last_fl = last_fl.where(FlowRow.host_id == host_id)
        return StoreCounts(
            hosts=n(Host),
            file_events=n(FileEventRow),
            flows=n(FlowRow),
            artefacts=n(Artefact),
            decisions=n(DecisionRow),
            incidents=n(IncidentRow),
            last_file_event=as_utc(conn.execute(last_fe).scalar()),
            last_flow=as_utc(conn.execute(last_fl).scalar()),
        )


@dataclass(frozen=True)
class HostCounts:
    """One host's rows in a (fleet) store."""

    host_id: str
    hostname: str | None
    agent_version: str | None
    last_seen: datetime | None
    file_events: int
    flows: int
    decisions: int
    incidents: int
    last_event: datetime | None


def host_counts(engine: Engine, host: str | None = None) -> list[HostCounts]:
    """Rows per host, by host name; `host` (id or name) keeps only that host.

    On PostgreSQL the event counts come from `event_rollup` (independent of the number
    of events); on SQLite each table is counted with one GROUP BY host_id. Incidents are
    counted (few). Hosts with rows but no `hosts` entry (registered later) are listed
    without a name.
    """
    with engine.connect() as conn:
        names = {r.id: r for r in conn.execute(select(Host))}

        def per_host(model: Any, time_col: Any = None) -> dict[str, tuple[int, Any]]:
            if rolled is not None and model is not IncidentRow:
                table = model.__table__.name
                return {h: t[table] for h, t in rolled.items() if table in t}
            cols = [model.host_id, func.count()]
            cols.append(func.max(time_col) if time_col is not None else func.count())
            q = select(*cols).group_by(model.host_id)
            return {h: (int(n), last) for h, n, last in conn.execute(q)}

        rolled = _rollup(conn)
        fe = per_host(FileEventRow, FileEventRow.time)
        fl = per_host(FlowRow, FlowRow.end_time)
        de = per_host(DecisionRow)
        inc = per_host(IncidentRow)
    out = []
    for hid in set(names) | set(fe) | set(fl):
        h = names.get(hid)
        lasts = [
            t for t in (as_utc(fe.get(hid, (0, None))[1]), as_utc(fl.get(hid, (0, None))[1])) if t
        ]
        row = HostCounts(
            host_id=hid,
            hostname=h.hostname if h else None,
            agent_version=h.agent_version if h else None,
            last_seen=as_utc(h.last_seen) if h else None,
            file_events=fe.get(hid, (0, None))[0],
            flows=fl.get(hid, (0, None))[0],
            decisions=de.get(hid, (0, None))[0],
            incidents=inc.get(hid, (0, None))[0],
            last_event=max(lasts) if lasts else None,
        )
        if host is None or host in (row.host_id, row.hostname):
            out.append(row)
    return sorted(out, key=lambda r: (r.hostname or "", r.host_id))


def as_utc(t: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything the agent stores is UTC."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _iso(t: datetime | None) -> str | None:
    t = as_utc(t)
    return t.isoformat() if t is not None else None


def _listed(row: Any, listed: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """A row's stored fields under their own names (agent/store/schema_map.py)."""
    out = {}
    for name, column in listed:
        value = getattr(row, column)
        out[name] = _iso(value) if isinstance(value, datetime) else value
    return out


def list_events(
    engine: Engine,
    since: datetime | None = None,
    limit: int = 100,
    kind: str | None = None,
    host: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Newest-first file events and flows as plain dicts (one JSON object each).

    `kind` is `file`, `flow`, or a file action (`written`, `moved`, ...). `host` matches
    a host id or host name.
    """
    with Session(engine) as conn:
        host_ids: list[str] | None = None
        if host:
            host_ids = list(
                conn.execute(
                    select(Host.id).where((Host.id == host) | (Host.hostname == host))
                ).scalars()
            ) or [host]
        out: list[dict[str, Any]] = []
        if kind in (None, "file") or (kind not in ("flow",)):
            q = select(FileEventRow).order_by(FileEventRow.time.desc(), FileEventRow.id.desc())
            if since is not None:
                q = q.where(FileEventRow.time >= since)
            if kind not in (None, "file"):
                q = q.where(FileEventRow.action == kind)
            if host_ids is not None:
                q = q.where(FileEventRow.host_id.in_(host_ids))
            tags = {}
            rows = list(conn.execute(q.limit(limit)).scalars())
            hashes = {r.sha256 for r in rows if r.sha256}
            if hashes:
                for a in conn.execute(
                    select(Artefact).where(Artefact.sha256.in_(hashes))
                ).scalars():
                    tags[a.sha256] = a.tags
            for r in rows:
                out.append(
                    {
                        "time": _iso(r.time),
                        "kind": "file",
                        "type": r.action,
                        **_listed(r, FILE_LISTED),
                        "sha256": r.sha256,
                        "kinds": r.kinds or [],
                        "tags": tags.get(r.sha256 or "", []),
                        "categories": r.categories or [],
                        "process": {"pid": r.pid, "exe": r.exe, "user": r.user},
                        "host_id": r.host_id,
                    }
                )
        if kind in (None, "flow"):
            q2 = select(FlowRow).order_by(FlowRow.end_time.desc(), FlowRow.id.desc())
            if since is not None:
                q2 = q2.where(FlowRow.end_time >= since)
            if host_ids is not None:
                q2 = q2.where(FlowRow.host_id.in_(host_ids))
            for f in conn.execute(q2.limit(limit)).scalars():
                out.append(
                    {
                        "time": _iso(f.end_time),
                        "kind": "flow",
                        "type": f.protocol,
                        "src": f"{f.src_ip}:{f.src_port}",
                        "dst": f"{f.dst_ip}:{f.dst_port}",
                        **_listed(f, FLOW_LISTED),
                        "channel": "network",
                        "tags": [],
                        "process": {"pid": f.pid, "exe": f.exe, "user": f.user},
                        "host_id": f.host_id,
                    }
                )
        out.sort(key=lambda d: d["time"] or "", reverse=True)
        yield from out[:limit]
