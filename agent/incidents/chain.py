"""The tamper-evident incident log: hash-chain records and their verification.

Every incident creation, update and status change appends a record whose payload is
the canonical JSON of the whole incident document, and whose hash is
`sha256(prev_hash + payload)`; a genesis record starts each host's chain and checkpoint
records are appended every `incidents.checkpoint_every` records and at a clean stop.
This module is pure: it builds payloads and verifies a sequence of records (from the
store or from an export file) against each other and against the incident rows. It
catches an edited byte, a deleted, inserted or reordered record, and an incident row
that differs from its latest record. A chain can always be re-sealed by someone who
rewrites every later record, or cut off at its tail; agent/incidents/anchor.py holds
the head anchors that catch those, and exports (which carry the chain fields and a
signed trailer) are the witness kept off the host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.incidents.model import canonical_json

GENESIS_PREV = "0" * 64
RECORD_TYPES = ("genesis", "incident", "update", "status", "checkpoint")


def link_hash(prev_hash: str, payload: str) -> str:
    return hashlib.sha256((prev_hash + payload).encode("utf-8")).hexdigest()


def make_payload(
    seq: int,
    record_type: str,
    time: str,
    host_id: str,
    hostname: str,
    incident: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> str:
    """The canonical JSON a record's hash covers; it repeats the record's own columns."""
    return canonical_json(
        {
            "seq": seq,
            "type": record_type,
            "time": time,
            "host_id": host_id,
            "hostname": hostname,
            "incident_uid": incident["uid"] if incident is not None else None,
            "incident": dict(incident) if incident is not None else None,
            "info": dict(info) if info is not None else None,
        }
    )


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One chain record as read back from the store or an export line.

    `payload` is None for a *stub*: an export line that keeps the chain's link but
    withholds content that the export's filters left out.
    """

    seq: int
    host_id: str
    record_type: str
    time: str
    incident_uid: str | None
    payload: str | None
    prev_hash: str
    hash: str

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.payload) if self.payload else {}


@dataclass(frozen=True, slots=True)
class Problem:
    host_id: str
    seq: int
    why: str
    position: int = -1  # where in the walk it was found; -1: after the walk (row checks)


@dataclass
class VerifyReport:
    records: int = 0
    incidents: int = 0
    hosts: int = 0
    problems: list[Problem] = field(default_factory=list)
    anchors: dict[str, int] = field(default_factory=dict)  # host -> first seq checked
    unsealed: dict[str, int] = field(default_factory=dict)  # records after last checkpoint
    signature: str = ""  # an export's trailer: "", absent, unchecked (...), verified (...)
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.position, p.host_id, p.seq))


def _check_columns(e: ChainEntry, doc: Mapping[str, Any]) -> str | None:
    for col, key in (
        ("seq", "seq"),
        ("record_type", "type"),
        ("host_id", "host_id"),
        ("incident_uid", "incident_uid"),
        ("time", "time"),
    ):
        if getattr(e, col) != doc.get(key):
            return (
                f"column {col} ({getattr(e, col)!r}) differs from "
                f"the hashed payload ({doc.get(key)!r})"
            )
    return None


def verify_entries(
    entries: Iterable[ChainEntry],
    incidents: Mapping[str, Mapping[str, Any]] | None = None,
    anchored: bool = False,
) -> VerifyReport:
    """Walk each host's chain in seq order and compare the incident rows with it.

    `entries` must come ordered by (host_id, seq) as stored (an export file's line
    order). `incidents` maps uid -> the current row document (None for an export:
    there the latest record *is* the incident). With `anchored`, a chain may start
    after seq 0 (an incremental export), its first prev_hash taken on trust.
    """
    report = VerifyReport()
    latest: dict[str, tuple[str, int, dict[str, Any]]] = {}
    state: dict[str, tuple[int, str]] = {}  # host -> (last seq, last hash)
    last_checkpoint: dict[str, int] = {}
    mentioned: set[str] = set()
    positions: dict[tuple[str, int], int] = {}
    for e in entries:
        report.records += 1
        if e.incident_uid:
            mentioned.add(e.incident_uid)
        prev = state.get(e.host_id)
        problem = _check_entry(e, prev, anchored)
        if prev is None:
            report.anchors[e.host_id] = e.seq
        state[e.host_id] = (e.seq, e.hash)
        if problem:
            report.problems.append(Problem(e.host_id, e.seq, problem, report.records - 1))
            continue
        positions[(e.host_id, e.seq)] = report.records - 1
        if e.record_type == "checkpoint":
            last_checkpoint[e.host_id] = e.seq
        if e.payload is not None and e.incident_uid:
            inc = e.document.get("incident") or {}
            latest[e.incident_uid] = (e.host_id, e.seq, inc)
    for host, (seq, _h) in state.items():
        report.unsealed[host] = seq - last_checkpoint.get(host, report.anchors[host])
    report.hosts = len(state)
    if incidents is not None:
        report.incidents = len(incidents)
        heads = {host: seq for host, (seq, _h) in state.items()}
        _compare_rows(report, latest, incidents, mentioned, heads)
        # a row problem belongs where its chain record sits in the walk
        report.problems = [
            p
            if p.position >= 0
            else Problem(p.host_id, p.seq, p.why, positions.get((p.host_id, p.seq), report.records))
            for p in report.problems
        ]
    else:
        report.incidents = len(latest)
    return report


def _check_entry(e: ChainEntry, prev: tuple[int, str] | None, anchored: bool) -> str | None:
    if prev is None:
        if e.seq == 0:
            if e.record_type != "genesis":
                return "the chain does not start with a genesis record"
            if e.prev_hash != GENESIS_PREV:
                return "the genesis record's prev_hash is not zero"
        elif not anchored:
            return f"records 0..{e.seq - 1} are missing (deleted?): the chain must start at seq 0"
    else:
        last_seq, last_hash = prev
        if e.seq != last_seq + 1:
            if e.seq <= last_seq:
                return f"seq {e.seq} follows seq {last_seq}: records are out of order or duplicated"
            return f"records {last_seq + 1}..{e.seq - 1} are missing (deleted?)"
        if e.prev_hash != last_hash:
            return (
                f"prev_hash does not match the hash of seq {last_seq}: "
                "a record was inserted, removed or reordered here"
            )
    if e.payload is None:
        return None  # a stub: link only
    if link_hash(e.prev_hash, e.payload) != e.hash:
        return "hash does not cover prev_hash + payload: the record was edited"
    try:
        doc = e.document
    except ValueError:
        return "payload is not JSON"
    return _check_columns(e, doc)


def _compare_rows(
    report: VerifyReport,
    latest: Mapping[str, tuple[str, int, dict[str, Any]]],
    incidents: Mapping[str, Mapping[str, Any]],
    mentioned: set[str],
    heads: Mapping[str, int],
) -> None:
    for uid, row in incidents.items():
        host = str(row.get("host_id"))
        if uid not in latest:
            if uid in mentioned:
                continue  # its records failed above; that failure is the one to report
            seq = heads.get(host, 0)
            if host in heads:
                # a row whose chain is present but never mentions it was inserted
                report.problems.append(
                    Problem(
                        host, seq, f"incident {uid} has no chain record: inserted outside the agent"
                    )
                )
            else:
                report.problems.append(
                    Problem(host, 0, f"incident {uid} belongs to host {host}, which has no chain")
                )
            continue
        _h, seq, doc = latest[uid]
        diff = [k for k in sorted(set(doc) | set(row)) if doc.get(k) != row.get(k)]
        if diff:
            report.problems.append(
                Problem(
                    host,
                    seq,
                    f"incident {uid} differs from its latest chain record in {', '.join(diff)}: "
                    "the row was edited",
                )
            )
    for uid, (host, seq, _doc) in latest.items():
        if uid not in incidents:
            report.problems.append(
                Problem(
                    host,
                    seq,
                    f"incident {uid} recorded at seq {seq} is missing: the row was deleted",
                )
            )


def check_witness(
    report: VerifyReport, stored: Mapping[tuple[str, int], str], witness: Iterable[ChainEntry]
) -> None:
    """Compare the store's chain with an earlier export of it (kept off the host).

    A chain alone cannot show that its tail was cut off, or that someone rewrote a
    record and re-sealed every hash after it; an export taken before can. Each record
    of the witness must still be in the store with the same hash.
    """
    for e in witness:
        have = stored.get((e.host_id, e.seq))
        if have is None:
            why = "is in the witness export but not in the store: the chain was truncated"
        elif have != e.hash:
            why = "has another hash than in the witness export: rewritten and re-sealed"
        else:
            continue
        report.problems.append(Problem(e.host_id, e.seq, f"record {e.seq} {why}", report.records))
        return
