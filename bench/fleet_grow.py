"""Growing the fleet store server-side, and timing the fleet's queries at each size.

Forwarding 100 M events through real agents would take hours on a 2-core VM, so past
the forwarded part the store is grown with `INSERT … SELECT … generate_series` in
the server: the same mix as bench/fleet_mix.py (70 % file events of four actions,
30 % flows of five destination classes, ≈ 1.5 % with a policy decision, incidents at
one per 700 events, a fifth of them open) spread uniformly over the last 30 days across
the fleet's hosts. Like real ingest, each statement moves forward in time (rows in time
order), and uids are unique per statement but not random (they key no query; random
ones only slow the growth down). The ingest figures come from the real forwarders only; these rows
exist to make the queries pay for the size a real fleet's store reaches.

Timed at each size: the CLI's own query functions (`status --hosts`,
`events list --host H --since 2h`, `incidents list --since 24h`) and every panel query
of the fleet Grafana dashboard (bench/fleet_panels.py), best and first of three runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from agent.incidents.queries import list_incidents
from agent.store.queries import host_counts, list_events

SPAN_DAYS = 30
CHUNK = 2_000_000  # events per INSERT statement (one transaction each)

_FILE_SQL = """
INSERT INTO file_events (uid, host_id, time, action, path, dest_path, channel, origin,
    sensor, size, inode, device, mtime_ns, sha256, kinds, categories, pid, exe, cmdline,
    uid_num, "user")
SELECT :salt || lpad(g::text, 10, '0'), 'fleet-' || lpad(h::text, 5, '0'), t,
    CASE WHEN r < 0.643 THEN 'written' WHEN r < 0.786 THEN 'created'
         WHEN r < 0.886 THEN 'moved' ELSE 'deleted' END,
    '/home/dev/proj' || (g % 20) || '/src/mod' || (g % 200) || '/file' || g || '.py',
    CASE WHEN r >= 0.786 AND r < 0.886 THEN '/home/dev/proj/moved/file' || g || '.py' END,
    'local', 'watch', 'files', (g * 7919) % 10000000, 1000000 + g, 2049,
    (extract(epoch from t) * 1e9)::bigint,
    CASE WHEN r2 < 0.05 THEN md5(g::text) || md5(:salt || g::text) END,
    CASE WHEN r2 < 0.05 THEN '["model_weights"]'::json END,
    CASE WHEN r2 < 0.05 THEN '["ai.model"]'::json END,
    4242, '/usr/bin/python3', 'python3 train.py', 1000, 'dev'
FROM (SELECT g, floor(random() * CAST(:hosts AS int))::int AS h, random() AS r, random() AS r2,
             :t0 + random() * :span AS t
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g) s
ORDER BY t
"""

_FLOW_SQL = """
INSERT INTO flows (uid, host_id, start_time, end_time, protocol, src_ip, src_port, dst_ip,
    dst_port, bytes_out, bytes_in, byte_source, name, name_source, sni, dest_class, country,
    close_reason, pid, exe, cmdline, uid_num, "user")
SELECT :salt || 'f' || lpad(g::text, 10, '0'), 'fleet-' || lpad(h::text, 5, '0'),
    t - interval '2 seconds', t, 'tcp', '10.1.0.1', 40000 + g % 20000,
    CASE c WHEN 'foreign' THEN '203.0.113.10' WHEN 'internal' THEN '10.20.0.5'
           ELSE '192.0.2.44' END,
    443,
    -- log-normal bytes (Box-Muller), as the simulated agents send
    least(floor(exp(8 + 2.5 * sqrt(-2 * ln(1 - r)) * cos(2 * pi() * r2))), 1e12)::bigint,
    1000 + g % 5000, 'tcp_info', 'upload.example.cn', 'sni', 'upload.example.cn', c,
    CASE c WHEN 'foreign' THEN 'CN' WHEN 'domestic' THEN 'DE' END, 'fin',
    99, '/usr/lib/firefox/firefox', 'firefox', 1000, 'dev'
FROM (SELECT g, floor(random() * CAST(:hosts AS int))::int AS h, random() AS r, random() AS r2,
             :t0 + random() * :span AS t,
             (ARRAY['internal','internal','internal','internal','internal','internal',
                    'internal','internal','approved','approved','approved','approved',
                    'approved','domestic','domestic','domestic','foreign','foreign',
                    'foreign','unknown'])[1 + floor(random() * 20)::int] AS c
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g) s
ORDER BY t
"""

_DECISION_SQL = """
INSERT INTO decisions (uid, host_id, time, subject_kind, subject_uid, pack, rule_id,
    severity, action, policy_version, reason, categories)
SELECT :salt || 'd' || lpad(g::text, 10, '0'), 'fleet-' || lpad(h::text, 5, '0'), t, 'file_event',
    md5(:salt || g::text), 'cn-catalogue', rule, 'high', 'alert', 'bench-v1',
    'model weights leaving for abroad', '["ai.model"]'::json
FROM (SELECT g, floor(random() * CAST(:hosts AS int))::int AS h, :t0 + random() * :span AS t,
             (ARRAY['cn.ai.weights','us.ear.source','eu.dual.dataset','site.secrets'])
                 [1 + floor(random() * 4)::int] AS rule
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g) s
ORDER BY t
"""

_INCIDENT_SQL = """
INSERT INTO incidents (uid, host_id, kind, rule_id, pack, severity, status, title,
    dedup_key, opened_at, updated_at, evidence, events_count, bytes_out, policy_version)
SELECT :salt || 'i' || lpad(g::text, 10, '0'), 'fleet-' || lpad(h::text, 5, '0'), 'exfiltration',
    (ARRAY['cn.ai.weights','us.ear.source','eu.dual.dataset','site.secrets'])[1 + k],
    'cn-catalogue', (ARRAY['high','medium','low','critical'])[1 + k],
    CASE WHEN s < 0.2 THEN 'open' WHEN s < 0.3 THEN 'acknowledged' ELSE 'closed' END,
    'upload of tagged files to upload.example.cn', md5(g::text), t,
    t + interval '5 minutes', '{}'::json, 3, 1048576, 'bench-v1'
FROM (SELECT g, floor(random() * CAST(:hosts AS int))::int AS h, floor(random() * 4)::int AS k,
             random() AS s, :t0 + random() * :span AS t
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g) s
ORDER BY t
"""


def event_count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(
            c.execute(
                text("SELECT (SELECT count(*) FROM file_events) + (SELECT count(*) FROM flows)")
            ).scalar_one()
        )


GROWN = ("file_events", "flows", "decisions", "incidents")


def drop_indexes(engine: Engine) -> list[str]:
    """Drop the grown tables' keys and indexes; returns the statements that restore them.

    Works on plain and on partitioned tables (a partitioned parent's index definition
    says `ON ONLY`, which would rebuild it without its partitions' indexes).
    """
    restore: list[str] = []
    with engine.begin() as c:
        for t in GROWN:
            keys = c.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u')"
                ),
                {"t": t},
            ).all()
            for name, definition in keys:
                restore.append(f'ALTER TABLE {t} ADD CONSTRAINT "{name}" {definition}')
                c.execute(text(f'ALTER TABLE {t} DROP CONSTRAINT "{name}"'))
            for name, definition in c.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"), {"t": t}
            ).all():
                restore.append(definition.replace(" ON ONLY ", " ON "))
                c.execute(text(f'DROP INDEX "{name}"'))
    return restore


def day_partitions(engine: Engine, now: datetime) -> int:
    """On a partitioned store, the day partitions the maintenance job would have made.

    The store's history is 30 days old: a real one got a partition a day from the
    maintenance job (agent/store/partitions.py, migration 0005), so the grown rows go to
    their days, not to the default partition. Plain tables (before 0005): nothing to do.
    """
    try:
        from agent.store import partitions
    except ImportError:
        return 0
    with engine.begin() as c:
        if not partitions.is_partitioned(c):
            return 0
        first = (now - timedelta(days=SPAN_DAYS)).date()
        wanted = [first + timedelta(days=i) for i in range(SPAN_DAYS + 2)]
        return int(partitions.ensure_days(c, wanted))


def grow(engine: Engine, add: int, hosts: int, salt: str, rebuild: bool = False) -> dict[str, Any]:
    """Add `add` events (and their decisions and incidents) in CHUNK-sized statements.

    `rebuild`: drop the indexes first and build them again after (as a restore does);
    for a store that grows several-fold, far quicker than maintaining 11 indexes row by
    row on two cores.
    """
    now = datetime.now(UTC)
    chunks = -(-add // CHUNK)
    span = timedelta(days=SPAN_DAYS) / chunks
    started = time.perf_counter()
    day_partitions(engine, now)
    restore = drop_indexes(engine) if rebuild else []
    done = 0
    for i in range(chunks):
        # like real ingest, each statement moves forward in time: chunk i fills the i-th
        # slice of the window, in time order, so the time indexes grow at their ends
        t0 = now - timedelta(days=SPAN_DAYS) + i * span
        n = min(CHUNK, add - done)
        nf = round(n * 0.7)
        p = {"hosts": hosts, "t0": t0, "span": span, "salt": f"{salt}{i:04d}"}
        with engine.begin() as c:
            c.execute(text(_FILE_SQL), {**p, "first": 1, "last": nf})
            c.execute(text(_FLOW_SQL), {**p, "first": 1, "last": n - nf})
            c.execute(text(_DECISION_SQL), {**p, "first": 1, "last": max(1, n * 155 // 10_000)})
            c.execute(text(_INCIDENT_SQL), {**p, "first": 1, "last": max(1, n // 700)})
        done += n
    loaded = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        for stmt in restore:
            c.execute(text(stmt))
        indexed = time.perf_counter()
        c.execute(text("VACUUM ANALYZE"))
    seconds = time.perf_counter() - started
    return {
        "added": add,
        "seconds": round(seconds, 1),
        "events_per_s": round(add / seconds),
        "insert_s": round(loaded - started, 1),
        "index_rebuild_s": round(indexed - loaded, 1) if rebuild else None,
        "vacuum_analyze_s": round(time.perf_counter() - indexed, 1),
    }


def timed(fn: Callable[[], object], runs: int = 3) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {
        "first_ms": round(times[0], 1),
        "best_ms": round(min(times), 1),
        "median_ms": round(statistics.median(times), 1),
    }


def cli_queries(engine: Engine, host: str) -> dict[str, dict[str, float]]:
    """The three fleet queries the issue names, through the CLI's own functions."""

    def since(hours: int) -> datetime:
        return datetime.now(UTC) - timedelta(hours=hours)

    return {
        "status --hosts": timed(lambda: host_counts(engine)),
        f"events list --host {host} --since 2h": timed(
            lambda: list(list_events(engine, since=since(2), host=host, limit=50))
        ),
        "incidents list --since 24h": timed(lambda: list_incidents(engine, since=since(24))),
    }


# the same answers in hand-written SQL over one psycopg cursor: what the CLI's functions
# cost above the database's own work (the reference rows of `make bench`); for
# `status --hosts` the count of every row, which the rollup of migration 0007 replaces
_BARE = {
    "status --hosts": [
        "SELECT id, hostname FROM hosts",
        "SELECT host_id, count(*), max(time) FROM file_events GROUP BY host_id",
        "SELECT host_id, count(*), max(end_time) FROM flows GROUP BY host_id",
        "SELECT host_id, count(*) FROM decisions GROUP BY host_id",
        "SELECT host_id, count(*) FROM incidents GROUP BY host_id",
    ],
    "events list": [
        "SELECT * FROM file_events WHERE host_id = %(h)s AND time >= %(s)s "
        "ORDER BY time DESC, id DESC LIMIT 50",
        "SELECT * FROM flows WHERE host_id = %(h)s AND end_time >= %(s)s "
        "ORDER BY end_time DESC, id DESC LIMIT 50",
    ],
    "incidents list --since 24h": [
        "SELECT * FROM incidents WHERE updated_at >= %(d)s ORDER BY updated_at DESC, id DESC "
        "LIMIT 100",
    ],
}


def bare_queries(engine: Engine, host_id: str) -> dict[str, dict[str, float]]:
    now = datetime.now(UTC)
    params = {"h": host_id, "s": now - timedelta(hours=2), "d": now - timedelta(hours=24)}

    def runner(stmts: list[str]) -> Callable[[], None]:
        def run() -> None:
            with engine.connect() as c:
                cur = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
                for q in stmts:
                    cur.execute(q, params)
                    cur.fetchall()

        return run

    return {name: timed(runner(stmts)) for name, stmts in _BARE.items()}


def store_size(engine: Engine) -> dict[str, Any]:
    with engine.connect() as c:
        total = int(c.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        rows = {
            t: int(c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("file_events", "flows", "decisions", "incidents")
        }
    return {"database_bytes": total, "rows": rows}
