"""A process hosting many simulated agents: each its own spool file, host id and forwarder.

Every agent is the production pair built by `open_forwarder` (agent/store/fleet_link.py)
from a `Settings` (the same engine options, batch size, timeouts, COPY path and linger as
`egress-agent run`), fed through
`Forwarder.commit` — the call the store writer makes with each batch of at most 1,000
events. What is simulated is only the sensors: events come from bench/fleet_mix.py.
Hosting several agents per process (each agent one forwarder thread, as in the daemon)
is what lets 1,000 agents run on a 2-core VM; they still hold separate spools, separate
connections and separate host ids, so PostgreSQL sees 1,000 independent clients.

The parent drives the phases over a pipe (bench/fleet.py): `backlog` (spools filled
before forwarding starts, then drained: the fleet's catch-up after an outage) and
`steady` (events at a per-host rate; the age of the oldest spooled event is sampled each
second: the forward lag).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.config import AgentSection, DatabaseSection, Settings
from agent.store.fleet_link import open_forwarder
from agent.store.forwarder import Forwarder
from bench.fleet_mix import HostMix


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    first: int  # index of this worker's first host
    count: int
    seed: int = 0


def host_id(i: int) -> str:
    return f"fleet-{i:05d}"


def hostname(i: int) -> str:
    return f"lab-{i:05d}"


class Agents:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.tmp = Path(tempfile.mkdtemp(prefix="ea-fleet-"))
        self.mixes: list[HostMix] = []
        self.forwarders: list[Forwarder] = []
        for i in range(spec.first, spec.first + spec.count):
            state = self.tmp / hostname(i)
            settings = Settings(
                agent=AgentSection(state_dir=state),
                database=DatabaseSection(url=spec.url, auto_upgrade=False),
            )
            self.forwarders.append(open_forwarder(settings, host_id(i), hostname(i)))
            self.mixes.append(HostMix(i, spec.seed))

    def fill(self, per_host: int) -> int:
        """Spool `per_host` events on each agent, in writer-sized batches, not forwarding."""
        n = 0
        for mix, fwd in zip(self.mixes, self.forwarders, strict=True):
            left = per_host
            while left:
                k = min(left, 1000)
                n += fwd.commit(mix.events(k))["events_kept"]
                left -= k
        return n

    def start(self) -> None:
        for fwd in self.forwarders:
            fwd.start()

    def spooled(self) -> int:
        return sum(len(f.spool) for f in self.forwarders)

    def oldest_ages(self, now: float) -> list[float]:
        """Seconds since the oldest event still spooled on each agent (0 when empty)."""
        out = []
        for f in self.forwarders:
            head = f.spool.peek(1)
            at = head[0].at if head else None  # the event's time, kept beside its rows
            out.append(max(0.0, now - at) if at is not None else 0.0)
        return out

    def steady(self, rate: float, seconds: float, feeders: int = 8) -> dict[str, Any]:
        """Feed `rate` events/s per host for `seconds`, sampling the lag once a second.

        Each agent commits what it owes every 100 ms (the writer's flush interval). The
        spool commits with fsync, and here a thousand spools share one disk that a single
        thread can fsync only ~300 times a second, so `feeders` threads share the agents.
        """
        ages: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                ages.extend(self.oldest_ages(time.time()))

        fed = [0] * feeders
        started = time.monotonic()
        tick = 0.1

        def feed(k: int) -> None:
            mine = range(k, len(self.forwarders), feeders)
            owed = dict.fromkeys(mine, 0.0)
            next_at = started
            while time.monotonic() - started < seconds:
                for j in mine:
                    owed[j] += rate * tick
                    due = int(owed[j])
                    if due:
                        owed[j] -= due
                        batch = self.mixes[j].events(due)
                        fed[k] += self.forwarders[j].commit(batch)["events_kept"]
                next_at += tick
                time.sleep(max(0.0, next_at - time.monotonic()))

        sampler = threading.Thread(target=sample, name="lag-sampler")
        sampler.start()
        threads = [threading.Thread(target=feed, args=(k,)) for k in range(feeders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fed_seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        return {"fed": sum(fed), "fed_seconds": fed_seconds, "ages": ages}

    def errors(self) -> list[str]:
        return sorted({f.last_error for f in self.forwarders if f.last_error})

    def close(self) -> dict[str, int]:
        # all at once: each stop may forward for up to forward_stop_seconds
        stoppers = [threading.Thread(target=f.stop) for f in self.forwarders]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        left = self.spooled()
        forwarded = sum(f.forwarded for f in self.forwarders)
        for f in self.forwarders:
            f.spool.close()
            f.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return {"left": left, "forwarded": forwarded}


def worker(spec: WorkerSpec, conn: Connection) -> None:
    """Serve the parent's commands until `close`; each answer is a dict."""
    logging.basicConfig(level=logging.ERROR)
    agents = Agents(spec)
    conn.send({"ready": spec.count})
    while True:
        cmd, arg = conn.recv()
        if cmd == "fill":
            conn.send({"spooled": agents.fill(arg)})
        elif cmd == "start":
            agents.start()
            conn.send({"started": True})
        elif cmd == "spooled":
            conn.send({"spooled": agents.spooled(), "errors": agents.errors()})
        elif cmd == "steady":
            conn.send(agents.steady(*arg))
        elif cmd == "linger":  # database.forward_linger of every agent, for an A/B run
            for f in agents.forwarders:
                f.linger = arg
            conn.send({"linger": arg})
        elif cmd == "close":
            conn.send(agents.close())
            return
