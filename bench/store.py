"""Store writer throughput: SQLite, PostgreSQL direct, and PostgreSQL via spool + forwarder.

`python -m bench.store [--events N]` writes the same event mix through the agent's own
StoreWriter into each target and prints one JSON object (events/s and rows/s, plus
bytes per stored event for the scale estimate in docs/fleet.md):

- sqlite: the default store (Core executemany, WAL, synchronous=NORMAL);
- pg_executemany / pg_copy: the writer committing straight to PostgreSQL (psycopg 3
  executemany, or COPY into a temp table + INSERT … ON CONFLICT DO NOTHING);
- spool: the writer committing to the local spool (what the agent does with a central
  store), then the forwarder draining it into PostgreSQL — both sides timed, and the CPU
  per row of the forwarder (this process) and of its PostgreSQL backend (/proc) apart;
- pg_raw_copy: a bare psycopg COPY of the same rows straight into the tables (no
  staging, no conflict handling): the ceiling the bulk path is compared with;
- pg_server_copy: the server's part of that alone — the rows as prebuilt COPY text, so
  the backend's CPU per row is the floor no client can go under on this schema.

The mix is one fleet host's (bench/fleet_mix.py): per 100 events 70 file events
(written, created, moved, deleted; 1 in 20 with an artefact, 1 in 50 with a decision)
and 30 flows. PostgreSQL is the server at 127.0.0.1:5432 (EGRESS_TEST_PG to override);
a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from agent.events import Event
from agent.store.bulk import copy_batch
from agent.store.db import make_engine, register_host, upgrade
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool
from agent.store.writer import EVENT_TABLES, StoreWriter, batch_rows
from bench.fleet_mix import HostMix

PG_ADMIN = os.environ.get("EGRESS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
HOST = "bench-host"


def event_mix(n: int) -> list[Event]:
    """The fleet simulator's event mix (bench/fleet_mix.py) of one host: one row builder."""
    return HostMix(0).events(n)


def rows_of(events: list[Event]) -> int:
    r = batch_rows(HOST, events)
    return len(r.file_events) + len(r.flows) + len(r.decisions)


def run_writer(engine: Any, events: list[Event], commit: Any = None) -> float:
    """Seconds for the writer to take and commit every event (stop() flushes)."""
    writer = StoreWriter(engine, HOST, batch_size=1000, flush_interval=0.1, commit=commit)
    started = time.perf_counter()
    writer.start()
    for e in events:
        writer.submit(e)
    writer.stop()
    return time.perf_counter() - started


def server_cpu(engine: Any) -> float:
    """CPU seconds used so far by this database's PostgreSQL backends (same host, /proc).

    With other work on the machine, wall-clock rates swing ±2×; CPU per row (client +
    server) does not, so the comparison is also made in rows per CPU second.
    """
    with engine.connect() as c:
        pids = c.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def cpu_now(engine: Any) -> float:
    return time.process_time() + server_cpu(engine)


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def pg_database() -> tuple[str, Any]:
    name = f"ea_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), admin


def truncate(engine: Any) -> None:
    with engine.begin() as c:
        c.execute(text("TRUNCATE file_events, flows, decisions, artefacts, lineage, file_state"))


def pg_bytes_per_event(engine: Any, n: int) -> float:
    with engine.connect() as c:
        size = c.execute(
            text(
                # a partitioned table's own size is 0: its partitions hold the rows
                "SELECT sum(pg_total_relation_size(r)) FROM unnest("
                "ARRAY['file_events','flows','decisions','artefacts','file_state']) t, "
                "LATERAL (SELECT relid FROM pg_partition_tree(t::regclass) "
                "UNION SELECT t::regclass) p(r)"
            )
        ).scalar_one()
    return round(int(size) / n, 1)


def raw_copy(engine: Any, events: list[Event], binary: bool = False) -> float:
    """A bare COPY of prebuilt rows (text format, or binary with the column types set)."""
    from agent.store.bulk import _copy, _layout

    rows = batch_rows(HOST, events)
    if binary:
        started = time.perf_counter()
        with engine.begin() as conn:
            cur = conn.connection.driver_connection.cursor()
            from psycopg import sql

            for name, table in EVENT_TABLES:
                _copy(cur, sql.Identifier(name), _layout(table), getattr(rows, name))
        return time.perf_counter() - started
    started = time.perf_counter()
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        from psycopg import sql
        from psycopg.types.json import Json
        from sqlalchemy import JSON

        for name, table in EVENT_TABLES:
            cols = [(c.name, isinstance(c.type, JSON)) for c in table.columns if c.name != "id"]
            names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(name), names)
            with cur.copy(stmt) as cp:
                for r in getattr(rows, name):
                    cp.write_row([Json(r[c]) if j and r[c] is not None else r[c] for c, j in cols])
    return time.perf_counter() - started


def comparison(
    what: str,
    agent: float,
    reference: float,
    unit: str,
    note: str,
    goal: str = "report",
    met: bool = True,
) -> dict[str, Any]:
    """One row of the report; the ratio is the agent's cost over the reference's (a rate's
    inverse), so above 1 is worse whatever the unit."""
    rate_unit = unit.startswith("rows/")
    ratio = reference / agent if rate_unit else agent / reference
    return {
        "what": what,
        "agent": agent,
        "reference": reference,
        "unit": unit,
        "ratio": round(ratio, 2),
        "goal": goal,
        "met": met,
        "note": note,
    }


def spool_append_cost(tmp: Path, events: list[Event]) -> dict[str, float]:
    """The writer's CPU per event to spool JSON (codec) and COPY rows (spool_rows)."""
    out = {}
    for form, as_rows in (("json", False), ("rows", True)):
        spool = Spool(tmp / f"append-{form}.db", 1 << 32)
        cpu = time.process_time()
        for i in range(0, len(events), 1000):
            spool.append(HOST, events[i : i + 1000], as_rows=as_rows)
        out[form] = round((time.process_time() - cpu) / len(events) * 1e6, 2)
        spool.close()
    return out


def server_copy(engine: Any, events: list[Event], nrows: int) -> dict[str, float]:
    """The backend's CPU per row for a COPY of the event tables' rows as prebuilt text."""
    from agent.store import spool_rows
    from agent.store.bulk import _copy_text

    texts = [spool_rows.encode(HOST, e) or "" for e in events]
    rows = spool_rows.batch(texts, spool_rows.layout(), 1)
    client, server = time.process_time(), server_cpu(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        for name in spool_rows.EVENT_TABLES:
            _copy_text(cur, name, rows.columns[name], rows.texts[name])
    s = time.perf_counter() - started
    client, server = time.process_time() - client, server_cpu(engine) - server
    return {
        "rows_per_s": rate(nrows, s),
        "client_us_per_row": round(client / nrows * 1e6, 2),
        "server_us_per_row": round(server / nrows * 1e6, 2),
    }


# the CLI's fleet queries as agent/store/queries.py and agent/store/incidents.py send them
PLANNED = {
    "events list --host lab-42 --since 2h (file events)": (
        "SELECT * FROM file_events WHERE time >= now() - interval '2 hours' "
        "AND host_id IN ('h42') ORDER BY time DESC, id DESC LIMIT 100"
    ),
    "status --hosts (file events)": (
        "SELECT host_id, count(*), max(time) FROM file_events GROUP BY host_id"
    ),
    # the look-up by content: the partial sha256 index (migration 0008) still serves it
    "file events by sha256 (look-up)": (
        "SELECT uid, host_id, time, path FROM file_events WHERE sha256 = md5('1') || md5('10')"
    ),
    "incidents list --since 24h": (
        "SELECT * FROM incidents WHERE updated_at >= now() - interval '24 hours' "
        "ORDER BY updated_at DESC, id DESC LIMIT 100"
    ),
}


def query_plans(engine: Any) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE (costs and timing off: the plan's shape) of each fleet query."""
    out = {}
    with engine.connect() as c:
        for name, q in PLANNED.items():
            plan = c.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {q}")).scalars()
            out[name] = list(plan)
    return out


def fleet_queries(engine: Any, rows: int, hosts: int = 100) -> dict[str, Any]:
    """The CLI's fleet queries on `rows` file events from `hosts` hosts over 30 days."""
    from agent.store import partitions
    from agent.store.queries import host_counts, list_events

    truncate(engine)
    started = time.perf_counter()
    with engine.begin() as c:
        if partitions.is_partitioned(c):  # the days the rows fall in, as maintenance makes
            today = datetime.now(UTC).date()
            partitions.ensure_days(c, [today - timedelta(days=d) for d in range(31)])
        c.execute(
            text(
                "INSERT INTO hosts (id, hostname, agent_version, first_seen, last_seen) "
                "SELECT 'h' || g, 'lab-' || g, 'bench', now(), now() "
                "FROM generate_series(0, :hosts - 1) g ON CONFLICT DO NOTHING"
            ),
            {"hosts": hosts},
        )
        c.execute(
            text(
                "INSERT INTO file_events (uid, host_id, time, action, path, channel, origin, "
                "sensor, size, sha256) SELECT md5(g::text), 'h' || (g % :hosts), "
                "now() - (g % 2592000) * interval '1 second', 'written', '/data/' || g, "
                "'local', 'watch', 'files', g, "
                "CASE WHEN g % 10 = 0 THEN md5((g / 10)::text) || md5(g::text) END "
                "FROM generate_series(1, :rows) g"
            ),
            {"hosts": hosts, "rows": rows},
        )
        c.execute(
            text(
                "INSERT INTO incidents (uid, host_id, kind, rule_id, pack, severity, status, "
                "title, dedup_key, opened_at, updated_at, evidence, events_count, bytes_out, "
                "policy_version) SELECT md5('i' || g), 'h' || (g % :hosts), 'exfiltration', "
                "'r' || (g % 20), 'pack', 'high', 'open', 't', 'k' || g, "
                "now() - (g % 2592) * interval '1000 s', "
                "now() - (g % 2592) * interval '1000 s', '{}', 1, 0, 'v1' "
                "FROM generate_series(1, :n) g"
            ),
            {"hosts": hosts, "n": max(rows // 1000, 10)},
        )
        c.execute(text("ANALYZE file_events"))
        c.execute(text("ANALYZE incidents"))
    load = time.perf_counter() - started

    def best_ms(fn: Any) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(min(times) * 1000, 1)

    def by_sha(sha: str) -> None:
        with engine.connect() as c:
            c.execute(text("SELECT count(*) FROM file_events WHERE sha256 = :s"), {"s": sha}).all()

    since = datetime.now(UTC) - timedelta(hours=1)
    with engine.connect() as c:
        sha = c.execute(text("SELECT sha256 FROM file_events WHERE sha256 IS NOT NULL LIMIT 1"))
        some_sha = sha.scalar_one()
    plans = query_plans(engine)
    return {
        "plans": plans,
        "rows": rows,
        "hosts": hosts,
        "load_rows_per_s": rate(rows, load),
        "bytes_per_row": pg_bytes_per_event(engine, rows),
        "ms_events_list_host": best_ms(lambda: list(list_events(engine, host="lab-42"))),
        "ms_events_list_since_1h": best_ms(lambda: list(list_events(engine, since=since))),
        "ms_status_hosts": best_ms(lambda: host_counts(engine)),
        "ms_by_sha256": best_ms(lambda: by_sha(some_sha)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--fleet-rows", type=int, default=0, help="also time fleet queries")
    ap.add_argument("--forward-only", action="store_true", help="only the forwarder and bare COPY")
    args = ap.parse_args()
    n = args.events
    events = event_mix(n)
    nrows = rows_of(events)
    result: dict[str, Any] = {
        "events": n,
        "rows": nrows,
        "mix": "one fleet host's (bench/fleet_mix.py): 70% file events, 30% flows",
        "batch_size": 1000,
    }

    with tempfile.TemporaryDirectory() as tmp:
        if not args.forward_only:
            sqlite = make_engine(f"sqlite:///{Path(tmp) / 'agent.db'}")
            upgrade(sqlite)
            register_host(sqlite, HOST, "bench")
            s = run_writer(sqlite, events)
            sqlite.dispose()
            result["sqlite"] = {
                "events_per_s": rate(n, s),
                "rows_per_s": rate(nrows, s),
                "bytes_per_event": round(
                    sum(p.stat().st_size for p in Path(tmp).glob("agent.db*")) / n, 1
                ),
            }

        url, admin = pg_database()
        try:
            pg = make_engine(url)
            upgrade(pg)
            register_host(pg, HOST, "bench")
            if not args.forward_only:
                s = run_writer(pg, events)
                result["pg_executemany"] = {
                    "events_per_s": rate(n, s),
                    "rows_per_s": rate(nrows, s),
                }
                result["pg_bytes_per_event"] = pg_bytes_per_event(pg, n)
                truncate(pg)
                s = run_writer(pg, events, commit=lambda b: copy_batch(pg, HOST, b))
                result["pg_copy"] = {"events_per_s": rate(n, s), "rows_per_s": rate(nrows, s)}
                truncate(pg)

            result["spool_append_us_per_event"] = spool_append_cost(Path(tmp), events)
            spool = Spool(Path(tmp) / "spool.db", 1 << 32)
            fwd = Forwarder(spool, pg, HOST, "bench", batch_size=5000)  # copy_direct
            s_in = run_writer(pg, events, commit=fwd.commit)
            spooled_bytes = spool.stats().bytes
            client, server = time.process_time(), server_cpu(pg)
            started = time.perf_counter()
            while fwd.forward_once():
                pass
            s_out = time.perf_counter() - started
            client, server = time.process_time() - client, server_cpu(pg) - server
            result["spool"] = {
                "writer_events_per_s": rate(n, s_in),
                "spool_bytes_per_event": round(spooled_bytes / n, 1),
                "forward_events_per_s": rate(n, s_out),
                "forward_rows_per_s": rate(nrows, s_out),
                "forward_rows_per_cpu_s": rate(nrows, client + server),
                "forward_client_us_per_row": round(client / nrows * 1e6, 2),
                "forward_server_us_per_row": round(server / nrows * 1e6, 2),
                "end_to_end_events_per_s": rate(n, s_in + s_out),
            }
            spool.close()
            truncate(pg)
            cpu = cpu_now(pg)
            s = raw_copy(pg, events)
            result["pg_raw_copy"] = {
                "events_per_s": rate(n, s),
                "rows_per_s": rate(nrows, s),
                "rows_per_cpu_s": rate(nrows, cpu_now(pg) - cpu),
            }
            truncate(pg)
            cpu = cpu_now(pg)
            s = raw_copy(pg, events, binary=True)
            result["pg_raw_copy_binary"] = {
                "events_per_s": rate(n, s),
                "rows_per_s": rate(nrows, s),
                "rows_per_cpu_s": rate(nrows, cpu_now(pg) - cpu),
            }
            truncate(pg)
            result["pg_server_copy"] = server_copy(pg, events, nrows)
            fwd_rate = result["spool"]["forward_rows_per_s"]
            spool_r, raw_r = result["spool"], result["pg_raw_copy"]
            appended = result["spool_append_us_per_event"]
            result["comparisons"] = [
                comparison(
                    "spool → PostgreSQL forwarding (exactly once) vs bare COPY",
                    fwd_rate,
                    raw_r["rows_per_s"],
                    "rows/s",
                    "reference: psycopg COPY straight into the tables, no idempotency",
                    goal="≥ 100,000 rows/s, exactly once (issue 18)",
                    met=fwd_rate >= 100_000,
                ),
                comparison(
                    "spool → PostgreSQL forwarding vs bare binary COPY",
                    fwd_rate,
                    result["pg_raw_copy_binary"]["rows_per_s"],
                    "rows/s",
                    "reference: binary COPY of prebuilt rows, no spool, no idempotency",
                ),
                comparison(
                    "forwarding vs bare COPY, rows per CPU second (client + server)",
                    spool_r["forward_rows_per_cpu_s"],
                    raw_r["rows_per_cpu_s"],
                    "rows/CPU-s",
                    "load-independent: the PostgreSQL backends' CPU read from /proc",
                ),
                comparison(
                    "forwarding: the PostgreSQL backend's CPU per row vs a COPY of "
                    "prebuilt rows (the server's floor)",
                    spool_r["forward_server_us_per_row"],
                    result["pg_server_copy"]["server_us_per_row"],
                    "µs/row",
                    "one backend runs a batch: 1e6 / its µs per row bounds rows/s; "
                    "forwarding also merges artefacts and file state",
                ),
                comparison(
                    "spooling an event: COPY rows vs JSON (the writer's CPU)",
                    appended["rows"],
                    appended["json"],
                    "µs/event",
                    "the agent spools rows with a PostgreSQL central store",
                ),
            ]
            if args.fleet_rows:
                result["fleet_queries"] = fleet_queries(pg, args.fleet_rows)
            pg.dispose()
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
