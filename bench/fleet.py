"""Fleet simulator: N agents' real forwarders against one PostgreSQL, and the store at scale.

`python -m bench.fleet [--agents 100,1000] [--sizes 1e6] [--private-server]` prints one
JSON object (`runs`, one per fleet size, and `comparisons`). What runs
(bench/fleet_agents.py): N simulated agents, each the production spool + forwarder pair
from `open_forwarder` with its own spool file and host id, several to a process (each
agent its own forwarder thread and its own PostgreSQL connection). Only the sensors are
synthetic (bench/fleet_mix.py).

Phases, for each fleet size, all in this run:

1. **backlog**: `--backlog-events` (default 100,000) are spooled across the agents before
   forwarding starts, then all N forwarders start together (a fleet catching up after an
   outage of the central store): sustained central ingest = events / seconds until every
   spool is empty. Afterwards the store must hold each event exactly once.
2. **reference**: the same number of events' rows COPYed by one bare psycopg connection
   straight into the same tables (no spool, no staging, no idempotency) — the ceiling.
3. **steady**: every agent gets `--rate` events/s for `--steady` seconds; the age of the
   oldest event still spooled on each agent is sampled every second (forward lag).
4. **scale** (last fleet only): the store is grown server-side to each of `--sizes`
   events (bench/fleet_grow.py; not an ingest figure) and at each size the CLI's three
   fleet queries, the same SQL by hand, and every panel of the fleet Grafana dashboard
   are timed. `--agents 0 --sizes 3e7,1e8` grows and times the store alone.

PostgreSQL: a scratch database on EGRESS_TEST_PG's server (dropped at the end) for up to
80 agents; past that, or with `--private-server`, a server of its own
(bench/fleet_server.py), since each agent holds a connection and the shared server
allows 100.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from agent.store.db import make_engine, upgrade
from bench.fleet_agents import hostname
from bench.fleet_grow import bare_queries, cli_queries, event_count, grow, store_size, timed
from bench.fleet_panels import expand, panel_queries
from bench.fleet_phases import Fleet, backlog, load, reference_copy, steady
from bench.fleet_server import PG_BIN, SERVER_CONF, private_cluster

PG_ADMIN = os.environ.get("EGRESS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED_SERVER_AGENTS = 80  # more agents than this get a private server (max_connections 100)


def progress(doc: dict[str, Any]) -> None:
    """A line per finished phase: a long run that is stopped still leaves its figures."""
    print(json.dumps({"progress": doc}), flush=True)


def disk_free_gb() -> float:
    return round(shutil.disk_usage("/").free / 1e9, 1)


def queries_at(engine: Engine, host: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    panels = {}
    for q in panel_queries():
        sql = text(expand(q.sql, now - timedelta(hours=24), now, "15m").replace(":", r"\:"))

        def run(sql: Any = sql) -> None:
            with engine.connect() as c:
                c.execute(sql).all()

        panels[q.panel] = timed(run)
    return {
        "cli": cli_queries(engine, host),
        "bare_sql": bare_queries(engine, host.replace("lab-", "fleet-")),
        "grafana_24h": panels,
        "load": load(),
    }


def scale(engine: Engine, sizes: list[int], hosts: int, salt: str) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        have = event_count(engine)
        step: dict[str, Any] = {"target_events": size}
        if size > have:
            free = disk_free_gb()
            need = (size - have) * 550 / 1e9  # bytes per event with indexes: 517 measured at 3 M
            if need > free - 10:
                step["skipped"] = f"needs ≈{need:.0f} GB, {free} GB free"
                out.append(step)
                break
            rebuild = size - have > have  # more than doubling: load, then index
            step["grow"] = grow(engine, size - have, hosts, f"{salt}s{len(out)}", rebuild)
        step.update(store_size(engine))
        step["events"] = step["rows"]["file_events"] + step["rows"]["flows"]
        step["queries"] = queries_at(engine, hostname(hosts // 2))
        step["disk_free_gb"] = disk_free_gb()
        out.append(step)
        progress(step)
    return out


def comparisons(res: dict[str, Any]) -> list[dict[str, Any]]:
    n = res["agents"]
    out: list[dict[str, Any]] = []
    if "backlog" in res:
        b, ref = res["backlog"], res["reference_copy"]
        out.append(
            {
                "what": f"central ingest from {n} agents' forwarders vs bare COPY (one connection)",
                "agent": b["events_per_s"],
                "reference": ref["events_per_s"],
                "unit": "events/s",
                "ratio": round(ref["events_per_s"] / b["events_per_s"], 2),
                "note": f"{b['events']} events, exactly once: {b['exactly_once']}; "
                f"load {b['load_before']}",
            }
        )
    s = res.get("steady")
    if s:
        out.append(
            {
                "what": f"forward lag p95 at {s['offered_events_per_s']} events/s "
                f"({n} agents × {s['rate_per_host']}/s, linger {s['linger_s']} s)",
                "agent": s["lag_s"]["p95"],
                "reference": None,
                "unit": "s",
                "note": f"max {s['lag_s']['max']} s; spool age of the oldest event, sampled 1/s",
            }
        )
        off = res.get("steady_no_linger")
        out.append(
            {
                "what": f"central store CPU in that steady phase ({n} agents)",
                "agent": s["server_cpu_share_of_a_core"],
                "reference": off["server_cpu_share_of_a_core"] if off else None,
                "unit": "share of a core",
                "ratio": (
                    round(s["server_cpu_share_of_a_core"] / off["server_cpu_share_of_a_core"], 2)
                    if off and off["server_cpu_share_of_a_core"]
                    else None
                ),
                "note": f"{s['transactions_per_s']} transactions/s"
                + (
                    f"; reference: the same fleet with forward_linger 0, "
                    f"{off['transactions_per_s']} transactions/s, lag p95 {off['lag_s']['p95']} s"
                    if off
                    else ""
                ),
            }
        )
    for step in res.get("scale", []):
        if "queries" not in step:
            continue
        bare = step["queries"]["bare_sql"]
        for q, t in step["queries"]["cli"].items():
            ref = bare["events list" if q.startswith("events list") else q]["best_ms"]
            out.append(
                {
                    "what": f"`{re.sub(r'lab-[0-9]+', 'H', q)}` at {step['events']:,} events",
                    "agent": t["best_ms"],
                    "reference": ref,
                    "unit": "ms",
                    "ratio": round(t["best_ms"] / ref, 2) if ref else None,
                    "note": "best of 3; reference: "
                    + (
                        "a GROUP BY host_id count of every event table by hand"
                        if q.startswith("status")
                        else "the same SQL by hand on one psycopg cursor"
                    ),
                }
            )
        worst = max(step["queries"]["grafana_24h"].items(), key=lambda kv: kv[1]["best_ms"])
        out.append(
            {
                "what": f"slowest fleet dashboard panel (24 h) at {step['events']:,} events",
                "agent": worst[1]["best_ms"],
                "reference": None,
                "unit": "ms",
                "note": worst[0],
            }
        )
    return out


def run(args: argparse.Namespace, n: int, sizes: list[int]) -> dict[str, Any]:
    """One fleet of `n` agents (0: the store alone) on its own scratch database."""
    per_process = args.agents_per_process or max(1, -(-n // 2))  # two processes by default
    per_agent = args.backlog or max(1, args.backlog_events // max(n, 1))
    res: dict[str, Any] = {
        "agents": n,
        "agents_per_process": per_process,
        "processes": -(-n // per_process) if n else 0,
        "backlog_per_agent": per_agent,
        "mix": "70% file events (written/created/moved/deleted, 5% artefact, 2% decision), "
        "30% flows (15% foreign)",
        "disk_free_gb": disk_free_gb(),
    }
    private = args.private_server or n > SHARED_SERVER_AGENTS
    if private and not (PG_BIN / "initdb").exists():
        return {**res, "skipped": f"needs a private server: no {PG_BIN}/initdb", "comparisons": []}
    with ExitStack() as stack:
        admin_url = PG_ADMIN
        if private:
            admin_url = stack.enter_context(private_cluster(max_connections=n + 50))
            res["server"] = {"private": True, **SERVER_CONF, "max_connections": n + 50}
        else:
            res["server"] = {"private": False, "url": make_url(PG_ADMIN).host}
        name = f"egress_fleet_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
            res["server"]["version"] = c.execute(text("SHOW server_version")).scalar_one()
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        engine = make_engine(url)
        try:
            upgrade(engine)  # the agents' own migrations (auto_upgrade off in the agents)
            if n:
                fleet = Fleet(url, n, per_process, args.seed)
                try:
                    res["backlog"] = backlog(fleet, engine, n, per_agent)
                    res["reference_copy"] = reference_copy(engine, res["backlog"]["events"])
                    progress({k: res[k] for k in ("agents", "backlog", "reference_copy")})
                    if args.steady > 0:
                        if args.linger_ab:  # the same fleet without the linger first
                            res["steady_no_linger"] = steady(
                                fleet, engine, args.rate, args.steady, linger=0.0
                            )
                            progress({"agents": n, "steady_no_linger": res["steady_no_linger"]})
                        res["steady"] = steady(
                            fleet, engine, args.rate, args.steady, linger=args.linger
                        )
                        progress({"agents": n, "steady": res["steady"]})
                finally:
                    res["agents_closed"] = fleet.close()
            else:  # the store alone (--agents 0): hosts registered as the agents would be
                with engine.begin() as c:
                    c.execute(
                        text(
                            "INSERT INTO hosts (id, hostname, agent_version, first_seen, "
                            "last_seen) SELECT 'fleet-' || lpad(g::text, 5, '0'), "
                            "'lab-' || lpad(g::text, 5, '0'), 'bench', now(), now() "
                            "FROM generate_series(0, :n - 1) g"
                        ),
                        {"n": args.hosts},
                    )
            res["scale"] = scale(engine, sizes, n or args.hosts, uuid.uuid4().hex[:6])
            res["comparisons"] = comparisons(res)
        finally:
            engine.dispose()
            if not args.keep:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--agents", default="100,1000", help="fleet sizes, comma-separated; 0: the store alone"
    )
    ap.add_argument("--hosts", type=int, default=1000, help="hosts of the store with --agents 0")
    ap.add_argument("--agents-per-process", type=int, default=0, help="default: N/2 rounded up")
    ap.add_argument("--backlog", type=int, default=0, help="events spooled per agent")
    ap.add_argument(
        "--backlog-events", type=int, default=100_000, help="spooled in all (without --backlog)"
    )
    ap.add_argument("--rate", type=float, default=2.0, help="steady events/s per agent")
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady load")
    ap.add_argument(
        "--sizes", default="1e6", help="store sizes to time queries at (events; the last fleet)"
    )
    ap.add_argument("--linger", type=float, default=1.0, help="the agents' database.forward_linger")
    ap.add_argument(
        "--linger-ab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a steady phase without the linger first (the reference of the same run)",
    )
    ap.add_argument("--private-server", action="store_true", help="also for small fleets")
    ap.add_argument("--keep", action="store_true", help="keep the scratch databases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # a SIGTERM still runs the clean-up (workers, scratch database, private server)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fleets = [int(a) for a in args.agents.split(",")]
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    runs = [run(args, n, sizes if i == len(fleets) - 1 else []) for i, n in enumerate(fleets)]
    out = {"runs": runs, "comparisons": [c for r in runs for c in r.pop("comparisons")]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
