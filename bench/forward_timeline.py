"""Where the forwarding pipeline spends its time: each stage per thread, per backend.

`python -m bench.forward_timeline [--events N] [--batch-size B] [--rollup as-is|slot|off]
[--nice]` spools the bench/store.py event mix, forwards it with the real `Forwarder`
(PostgreSQL bulk path, two batches in flight: agent/store/rows_pipeline.py) and wraps
each stage — spool read, the opened batch's mark check and COPYs, the finishing
batch's merges, mark and commit, the spool delete — to record its thread, wall time,
the thread's CPU (`/proc/self/task/<tid>/schedstat`) and its backend's CPU
(`/proc/<pid>/schedstat`, same host). It prints the totals per stage and thread, a bare
text COPY of the same rows as the reference of the same run, and with `--timeline` the
stages of a few batches in the middle, which show where a thread or backend waits for
another (a stage whose wall time is far above its backend's CPU).

`--rollup` is a measurement, not a configuration: `off` drops the event_rollup insert
triggers in the scratch database; `slot` gives event_rollup a `slot` column in its key
that the opened transaction sets to its batch's parity, so two batches in flight never
update the same rollup row (docs/fleet.md, "Where the pipeline stalls"). `--nice` runs
this process and the scratch database's backends at nice -10 (root), to measure against
other load on the machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from agent.store import bulk, rollup, rows_pipeline, spool_ahead
from agent.store.db import make_engine, register_host, upgrade
from agent.store.forwarder import Forwarder
from agent.store.spool import Spool
from bench.store import (
    HOST,
    event_mix,
    pg_database,
    raw_copy,
    rows_of,
    run_writer,
    server_cpu,
    truncate,
)


@dataclass(frozen=True, slots=True)
class Stage:
    thread: str
    name: str
    start: float
    end: float
    thread_cpu: float
    backend_cpu: float


STAGES: list[Stage] = []


def _cpu_ns(path: str) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError):
        return 0


def _timed(fn: Callable[..., Any], name: Callable[..., str], pid: Callable[..., int | None]) -> Any:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        backend = pid(*a, **k)
        task = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        b0 = _cpu_ns(f"/proc/{backend}/schedstat") if backend else 0
        c0, t0 = _cpu_ns(task), time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t1, c1 = time.perf_counter(), _cpu_ns(task)
            b1 = _cpu_ns(f"/proc/{backend}/schedstat") if backend else 0
            thread = threading.current_thread().name.rsplit("_", 1)[0]
            STAGES.append(Stage(thread, name(*a, **k), t0, t1, (c1 - c0) / 1e9, (b1 - b0) / 1e9))

    return wrapper


def instrument() -> None:
    """Wrap the stages (module attributes, so the callers' look-ups find the wrappers)."""

    def cur_pid(cur: Any, *_: Any) -> int:
        return int(cur.connection.info.backend_pid)

    def conn_pid(conn: Any, *_: Any) -> int:
        return int(conn.connection.driver_connection.info.backend_pid)

    def none(*_: Any) -> None:
        return None

    def fixed(label: str) -> Callable[..., str]:
        return lambda *_a, **_k: label

    bulk._copy_text = _timed(bulk._copy_text, lambda c, t, *_: f"copy {t}", cur_pid)
    bulk._merge_text = _timed(bulk._merge_text, lambda c, t, *_: f"merge {t}", cur_pid)
    bulk._mark = _timed(bulk._mark, fixed("mark"), cur_pid)
    bulk._marked = _timed(bulk._marked, fixed("mark check"), cur_pid)
    rows_pipeline.open_rows = _timed(rows_pipeline.open_rows, fixed("open (all)"), conn_pid)
    rows_pipeline.finish = _timed(
        rows_pipeline.finish, fixed("finish (all, with commit)"), lambda o, *_: conn_pid(o.conn)
    )
    ahead = spool_ahead.SpoolAhead
    ahead.read = _timed(ahead.read, fixed("spool read"), none)  # type: ignore[method-assign]
    ahead.next = _timed(ahead.next, fixed("wait for next"), none)  # type: ignore[method-assign]
    Spool.acknowledge = _timed(Spool.acknowledge, fixed("spool delete"), none)  # type: ignore[method-assign]


def rollup_slots(engine: Engine) -> None:
    """event_rollup keyed by a slot too, set per opened transaction to its batch's parity."""
    with engine.begin() as c:
        c.execute(text("ALTER TABLE event_rollup ADD COLUMN slot smallint NOT NULL DEFAULT 0"))
        c.execute(text("ALTER TABLE event_rollup DROP CONSTRAINT event_rollup_pkey"))
        c.execute(text("ALTER TABLE event_rollup ADD PRIMARY KEY (host_id, table_name, day, slot)"))
        slot = "coalesce(nullif(current_setting('egress.rollup_slot', true), ''), '0')::smallint"
        for table, col in rollup.TIMED.items():
            added = rollup._functions(table, col)[0]
            added = added.replace("day, n_rows, last_time)", "day, slot, n_rows, last_time)")
            added = added.replace("count(*), max(", f"{slot}, count(*), max(")
            added = added.replace(
                "(host_id, table_name, day) DO", "(host_id, table_name, day, slot) DO"
            )
            c.execute(text(added))
    copy_event_rows = rows_pipeline.copy_event_rows
    batches = iter(range(1 << 62))

    def with_slot(cur: Any, rows: Any, mark: Any) -> None:
        parity = str(next(batches) % 2)
        cur.execute("SELECT set_config('egress.rollup_slot', %s, true)", (parity,))
        copy_event_rows(cur, rows, mark)

    rows_pipeline.copy_event_rows = with_slot


def renice(engine: Engine) -> None:
    """This database's backends (three opened first: the forwarder's pool) at nice -10."""
    conns = [engine.connect() for _ in range(3)]
    with engine.connect() as c:
        q = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = c.execute(q).scalars().all()
    for conn in conns:
        conn.close()
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, -10)
        except OSError:
            pass


def report(nrows: int, timeline: bool) -> None:
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for s in STAGES:
        t = totals[(s.thread, s.name)]
        t[0] += 1
        t[1] += s.end - s.start
        t[2] += s.thread_cpu
        t[3] += s.backend_cpu
    print(f"{'thread':14} {'stage':34} {'n':>4} {'wall':>6} {'thread':>7} {'backend':>7}  µs/row")
    for (thread, name), (n, wall, cpu, backend) in sorted(totals.items()):
        us = [x / nrows * 1e6 for x in (wall, cpu, backend)]
        print(f"{thread:14} {name:34} {n:4.0f} {us[0]:6.2f} {us[1]:7.2f} {us[2]:7.2f}")
    if timeline and STAGES:
        stages = sorted(STAGES, key=lambda s: s.start)
        t0 = stages[0].start
        middle = stages[len(stages) // 2 : len(stages) // 2 + 40]
        print("\nstart ms   end ms  thread         stage                          backend ms")
        for s in middle:
            print(
                f"{(s.start - t0) * 1e3:8.1f} {(s.end - t0) * 1e3:8.1f}  {s.thread:14} "
                f"{s.name:30} {s.backend_cpu * 1e3:6.1f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--rollup", choices=("as-is", "slot", "off"), default="as-is")
    ap.add_argument("--nice", action="store_true")
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    if args.nice:
        os.nice(-10)
    events = event_mix(args.events)
    nrows = rows_of(events)
    instrument()
    url, admin = pg_database()
    try:
        pg = make_engine(url)
        upgrade(pg)
        register_host(pg, HOST, "bench")
        if args.rollup == "slot":
            rollup_slots(pg)
        elif args.rollup == "off":
            with pg.begin() as c:
                for table in rollup.TIMED:
                    c.execute(text(f'DROP TRIGGER {rollup.TABLE}_ins ON "{table}"'))
        with tempfile.TemporaryDirectory() as tmp:
            spool = Spool(Path(tmp) / "spool.db", 1 << 32)
            fwd = Forwarder(spool, pg, HOST, "bench", batch_size=args.batch_size)
            run_writer(pg, events, commit=fwd.commit)
            if args.nice:
                renice(pg)
            STAGES.clear()
            client, server = time.process_time(), server_cpu(pg)
            started = time.perf_counter()
            while fwd.forward_once():
                pass
            wall = time.perf_counter() - started
            client, server = time.process_time() - client, server_cpu(pg) - server
            spool.close()
        report(nrows, args.timeline)
        truncate(pg)
        if args.nice:
            renice(pg)
        bare = raw_copy(pg, events)
        print(
            f"\nforwarding {nrows / wall:,.0f} rows/s; bare text COPY {nrows / bare:,.0f} rows/s "
            f"(ratio {bare / wall:.2f}); rollup {args.rollup}, batches of {args.batch_size}; "
            f"CPU a row: forwarder {client / nrows * 1e6:.2f} µs, "
            f"backends {server / nrows * 1e6:.2f} µs"
        )
        pg.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
