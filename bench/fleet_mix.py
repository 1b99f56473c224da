"""Synthetic but realistic event mixes for the fleet simulator (bench/fleet.py).

Each simulated host makes the records its real sensors would, as the real dataclasses of
agent/events.py, so the spool, codec and forwarder do the work they do in production.
Per 100 events: 70 file events (45 close-after-write, 10 created, 7 moved, 8 deleted;
1 in 20 with a classified artefact, 1 in 50 with a policy decision) and 30 outbound
flows (internal 40 %, approved 25 %, domestic 15 %, foreign 15 %, unknown 5 %; bytes
log-normal; 1 in 30 foreign flows with a decision). bench/fleet_grow.py grows the store
server-side with the same proportions, so the grown rows look like the forwarded ones.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from typing import Any

from agent import events as _events
from agent.events import (
    Artefact,
    CategoryMatch,
    Decision,
    Event,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
    Severity,
    Tag,
)

FILE_SHARE = 0.70
ACTIONS = (
    (FileAction.WRITTEN, 45),
    (FileAction.CREATED, 10),
    (FileAction.MOVED, 7),
    (FileAction.DELETED, 8),
)
DEST_CLASSES = (
    ("internal", 40),
    ("approved", 25),
    ("domestic", 15),
    ("foreign", 15),
    ("unknown", 5),
)
RULES = (
    ("cn.ai.weights", "cn-catalogue", Severity.HIGH, "model weights leaving for abroad"),
    ("us.ear.source", "us-ear", Severity.MEDIUM, "controlled source code copied"),
    ("eu.dual.dataset", "eu-dual-use", Severity.LOW, "dual-use dataset moved"),
    ("site.secrets", "site", Severity.CRITICAL, "secret material uploaded"),
)
KINDS = ("model_weights", "dataset", "source_code", "archive", "document")
PROCS = (
    ProcessInfo(pid=4242, exe="/usr/bin/python3", cmdline="python3 train.py", uid=1000, user="dev"),
    ProcessInfo(pid=777, exe="/usr/bin/git", cmdline="git push origin main", uid=1000, user="dev"),
    ProcessInfo(
        pid=1313, exe="/usr/bin/rsync", cmdline="rsync -a out/ nas:/b/", uid=1001, user="ci"
    ),
    ProcessInfo(pid=99, exe="/usr/lib/firefox/firefox", cmdline="firefox", uid=1000, user="dev"),
)
NAMES = {
    "internal": ("git.lab.internal", "10.20.0.5"),
    "approved": ("github.com", "140.82.121.4"),
    "domestic": ("files.example.de", "192.0.2.44"),
    "foreign": ("upload.example.cn", "203.0.113.10"),
    "unknown": (None, "198.51.100.7"),
}


# a Decision's action: an enum in newer agent.events, a plain string before
ALERT: Any = getattr(_events, "Action", str)("alert")


def _pick(rng: random.Random, table: tuple[tuple[object, int], ...]) -> object:
    return rng.choices([v for v, _ in table], [w for _, w in table])[0]


class HostMix:
    """One host's event stream; deterministic for a seed, timed at the moment of making."""

    def __init__(self, host_index: int, seed: int = 0) -> None:
        self.rng = random.Random(seed * 1_000_003 + host_index)
        self.host_index = host_index
        self.n = 0

    def _decision(self) -> Decision:
        rule, pack, sev, reason = self.rng.choice(RULES)
        return Decision(rule, pack, sev, ALERT, "bench-v1", reason, ("ai.model",))

    def _file(self, t: datetime) -> FileEvent:
        rng = self.rng
        action = _pick(rng, ACTIONS)
        proj = rng.randrange(20)
        path = f"/home/dev/proj{proj}/src/mod{rng.randrange(200)}/file{self.n:07d}.py"
        artefact = None
        if rng.random() < 0.05:
            kind = rng.choice(KINDS)
            sha = hashlib.sha256(f"{self.host_index}:{self.n}".encode()).hexdigest()
            artefact = Artefact(
                sha,
                rng.randrange(1 << 10, 1 << 30),
                kind,
                (Tag(kind, f"{kind} recognised by header"),),
                (CategoryMatch("ai.model", 2, "cn-catalogue", 2, "medium"),),
            )
        return FileEvent(
            action=action,  # type: ignore[arg-type]
            path=path,
            dest_path=path + ".moved" if action is FileAction.MOVED else None,
            size=None if action is FileAction.DELETED else int(rng.lognormvariate(9, 2)),
            inode=1_000_000 + self.n,
            device=2049,
            mtime_ns=int(t.timestamp() * 1e9),
            process=rng.choice(PROCS),
            time=t,
            artefact=artefact,
            decisions=(self._decision(),) if rng.random() < 0.02 else (),
        )

    def _flow(self, t: datetime) -> Flow:
        rng = self.rng
        dest_class = str(_pick(rng, DEST_CLASSES))
        name, ip = NAMES[dest_class]
        foreign = dest_class == "foreign"
        return Flow(
            "tcp" if rng.random() < 0.9 else "udp",
            f"10.1.{self.host_index // 250}.{self.host_index % 250 + 1}",
            rng.randrange(32768, 61000),
            ip,
            443,
            t,
            t,
            bytes_out=int(rng.lognormvariate(8, 2.5)),
            bytes_in=int(rng.lognormvariate(9, 2)),
            byte_source="tcp_info",
            name=name,
            name_source="sni" if name else None,
            sni=name,
            dest_class=dest_class,
            country={"foreign": "CN", "domestic": "DE", "approved": "US"}.get(dest_class),
            process=rng.choice(PROCS),
            decisions=(self._decision(),) if foreign and rng.random() < 1 / 30 else (),
        )

    def events(self, count: int, at: datetime | None = None) -> list[Event]:
        """`count` events stamped `at` (default now): the time the spool age is measured from."""
        t = at or datetime.now(UTC)
        out: list[Event] = []
        for _ in range(count):
            self.n += 1
            out.append(self._file(t) if self.rng.random() < FILE_SHARE else self._flow(t))
        return out
