"""The fleet of simulated agents and its forwarding phases, for bench/fleet.py.

`Fleet` starts the worker processes of bench/fleet_agents.py and drives them over
pipes; `backlog` (spools filled, then all forwarders started: the catch-up after an
outage), `reference_copy` (the same events by one bare COPY) and `steady` (events at a
rate per agent: forward lag, and the central store's CPU and transactions) are the
phases bench/fleet.py runs for each fleet size. Apart from it because these are the
ingest measurements and the rest there is the store's scale and the report.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.fleet_agents import WorkerSpec, worker
from bench.fleet_grow import event_count
from bench.fleet_mix import HostMix
from bench.store import raw_copy


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Fleet:
    """The worker processes and the pipes that drive them."""

    def __init__(self, url: str, agents: int, per_process: int, seed: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        for first in range(0, agents, per_process):
            parent, child = ctx.Pipe()
            spec = WorkerSpec(url, first, min(per_process, agents - first), seed)
            p = ctx.Process(target=worker, args=(spec, child), name=f"fleet-{first}", daemon=True)
            p.start()
            self.procs.append(p)
            self.pipes.append(parent)
        for pipe in self.pipes:
            pipe.recv()  # ready

    def ask(self, cmd: str, arg: Any = None) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send((cmd, arg))
        return [pipe.recv() for pipe in self.pipes]

    def spooled(self) -> int:
        return sum(r["spooled"] for r in self.ask("spooled"))

    def drain(self, stall: float = 120.0) -> None:
        """Wait until every spool is empty; fail if none shrinks for `stall` seconds."""
        last, since = -1, time.monotonic()
        while True:
            res = self.ask("spooled")
            left = sum(r["spooled"] for r in res)
            if not left:
                return
            if left != last:
                last, since = left, time.monotonic()
            elif time.monotonic() - since > stall:
                errors = sorted({e for r in res for e in r["errors"]})
                raise RuntimeError(f"forwarding stalled with {left} spooled: {errors[:3]}")
            time.sleep(0.2)

    def close(self) -> dict[str, int]:
        res = self.ask("close")
        for p in self.procs:
            p.join(60)
        return {k: sum(r[k] for r in res) for k in ("left", "forwarded")}


def backlog(fleet: Fleet, engine: Engine, agents: int, per_host: int) -> dict[str, Any]:
    before = event_count(engine)
    spooled = sum(r["spooled"] for r in fleet.ask("fill", per_host))
    load_before = load()
    started = time.perf_counter()
    fleet.ask("start")
    fleet.drain()
    seconds = time.perf_counter() - started
    stored = event_count(engine) - before
    with engine.connect() as c:
        per_host_rows = c.execute(
            text(
                "SELECT count(DISTINCT host_id), min(n), max(n) FROM (SELECT host_id, count(*) n "
                "FROM (SELECT host_id FROM file_events UNION ALL SELECT host_id FROM flows) u "
                "WHERE host_id LIKE 'fleet-%' GROUP BY host_id) x"
            )
        ).one()
    return {
        "events": spooled,
        "seconds": round(seconds, 2),
        "events_per_s": round(spooled / seconds),
        "stored": stored,
        "exactly_once": stored == spooled
        and int(per_host_rows[0]) == agents
        and int(per_host_rows[1]) == int(per_host_rows[2]) == per_host,
        "load_before": load_before,
        "load_after": load(),
    }


def reference_copy(engine: Engine, events: int) -> dict[str, Any]:
    """Bare COPY of the same number of events (one connection), then those rows removed."""
    mix = HostMix(999_999)
    done, seconds = 0, 0.0
    while done < events:
        k = min(50_000, events - done)
        seconds += raw_copy(engine, mix.events(k))
        done += k
    with engine.begin() as c:
        for t in ("file_events", "flows", "decisions"):
            c.execute(text(f"DELETE FROM {t} WHERE host_id = 'bench-host'"))
    return {"events": events, "seconds": round(seconds, 2), "events_per_s": round(events / seconds)}


def postgres_cpu(engine: Engine) -> float:
    """CPU seconds of the whole PostgreSQL server this engine talks to (same host, /proc):
    the postmaster and every child, plus the children it has reaped (its cutime/cstime),
    so backends that came and went between two readings are counted too."""
    with engine.connect() as c:
        backend = int(c.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def fields(pid: int | str) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    postmaster = int(fields(backend)[1])
    ticks = sum(int(v) for v in fields(postmaster)[11:15])  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                f = fields(entry.name)
            except OSError:
                continue
            if int(f[1]) == postmaster:
                ticks += int(f[11]) + int(f[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def commits(engine: Engine) -> int:
    """Transactions committed in this database so far (the statistics collector's)."""
    with engine.connect() as c:
        c.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            c.execute(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def steady(
    fleet: Fleet, engine: Engine, rate: float, seconds: float, linger: float | None = None
) -> dict[str, Any]:
    """Events at `rate` per agent for `seconds`: forward lag, and the central store's
    CPU (the whole server's, `postgres_cpu`) and transactions per second."""
    if linger is not None:
        fleet.ask("linger", linger)
    before = event_count(engine)
    load_before = load()
    cpu, txs, started = postgres_cpu(engine), commits(engine), time.perf_counter()
    res = fleet.ask("steady", (rate, seconds))
    fed = sum(r["fed"] for r in res)
    fed_seconds = max(r["fed_seconds"] for r in res)
    drain_started = time.perf_counter()
    fleet.drain()
    drain = time.perf_counter() - drain_started
    took = time.perf_counter() - started
    cpu, txs = postgres_cpu(engine) - cpu, commits(engine) - txs
    ages = sorted(a for r in res for a in r["ages"])

    def pct(p: float) -> float:
        return round(ages[min(len(ages) - 1, int(p * len(ages)))], 2) if ages else 0.0

    return {
        "rate_per_host": rate,
        "offered_events_per_s": round(fed / fed_seconds),
        "fed": fed,
        "stored": event_count(engine) - before,
        "drain_after_s": round(drain, 2),
        "lag_s": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
        "lag_mean_s": round(statistics.fmean(ages), 3) if ages else 0.0,
        "linger_s": linger,
        "server_cpu_share_of_a_core": round(cpu / took, 3),
        "server_cpu_ms_per_event": round(cpu / max(fed, 1) * 1e3, 3),
        "transactions_per_s": round(txs / took, 1),
        "load": [load_before, load()],
    }
