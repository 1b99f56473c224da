"""The incident log: the only code that writes incidents and their hash chain.

A finding opens an incident or updates the open one with the same dedup key (kind +
rule + lineage root + destination or channel) seen within `incidents.dedup_window`;
an analyst's acknowledge or close changes its status. Each of these writes the row and
appends its chain record in ONE transaction, so a row never exists without the record
that vouches for it. Several writers may share a chain (the daemon and an analyst's
`incidents ack` on the same store): the record's primary key (host, seq) makes a lost
race fail cleanly, and the transaction is retried on the new head.

After each write the chain head is published (agent/incidents/heads.py): the
`egress_agent_incident_chain_head_*` gauges, and, with `anchor_dir`, a signed anchor
file in the state directory; each checkpoint also logs "incident chain head seq=N
hash=H" to the journal. These are what show a chain cut off at its tail.

The statements themselves are in agent/store/incidents.py; this module decides what to
write (documents, chain payloads and hashes) and in which transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from agent import metrics
from agent.errors import UserFacingError
from agent.events import new_uid
from agent.incidents.chain import GENESIS_PREV, link_hash, make_payload
from agent.incidents.heads import HeadPublisher
from agent.incidents.model import (
    IncidentFinding,
    document_from_row,
    iso,
    merge,
    new_document,
    row_values,
)
from agent.store import incidents as store
from agent.store.incidents import hostname_of, transact
from agent.store.rows import storable_text

log = logging.getLogger(__name__)

__all__ = ["IncidentError", "IncidentLog", "Recorded", "append_record", "set_status", "transact"]

SYSTEM_ACTOR = "egress-agent"
TRANSITIONS = {"acknowledged": ("open",), "closed": ("open", "acknowledged")}


class IncidentError(UserFacingError):
    """An analyst's request that cannot be done (unknown id, wrong status)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    uid: str
    created: bool
    superseded: tuple[str, ...] = ()


def append_record(
    conn: Connection,
    host_id: str,
    hostname: str,
    record_type: str,
    now: datetime,
    incident: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> int:
    """Append one record at the head of `host_id`'s chain; returns its seq."""
    head = store.chain_head(conn, host_id)
    if head is None and record_type != "genesis":
        append_record(conn, host_id, hostname, "genesis", now, info={"reason": "first record"})
        return append_record(conn, host_id, hostname, record_type, now, incident, info)
    seq = head[0] + 1 if head is not None else 0
    prev = head[1] if head is not None else GENESIS_PREV
    stamp = iso(now)
    payload = make_payload(seq, record_type, stamp, host_id, hostname, incident, info)
    store.insert_chain_record(
        conn,
        seq=seq,
        host_id=host_id,
        time=now,
        record_type=record_type,
        incident_uid=incident["uid"] if incident is not None else None,
        payload=payload,
        prev_hash=prev,
        hash=link_hash(prev, payload),
    )
    return seq


class IncidentLog:
    """Opens, updates and checkpoints incidents for one host."""

    def __init__(
        self,
        engine: Engine,
        host_id: str,
        hostname: str,
        dedup_window: float = 3600.0,
        checkpoint_every: int = 100,
        anchor_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.host_id = host_id
        self.hostname = hostname
        self.dedup_window = timedelta(seconds=dedup_window)
        self.checkpoint_every = checkpoint_every
        self.heads = HeadPublisher(engine, host_id, anchor_dir)

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Write the genesis record of a new chain; publish the checkpoint and open gauges."""

        def tx(conn: Connection) -> None:
            if not store.has_chain(conn, self.host_id):
                info = {"reason": "agent start"}
                append_record(conn, self.host_id, self.hostname, "genesis", _now(), info=info)

        transact(self.engine, tx)
        last = store.last_checkpoint_time(self.engine, self.host_id)
        if last is not None:
            metrics.CHAIN_CHECKPOINT.set(_as_utc(last).timestamp())
        self.refresh_open_gauge()
        self.publish_head(journal=True)

    def checkpoint(self, reason: str) -> int:
        seq = transact(self.engine, lambda conn: self._checkpoint(conn, reason))
        metrics.CHAIN_CHECKPOINT.set_to_current_time()
        self.publish_head(journal=True)
        return seq

    def publish_head(self, journal: bool = False) -> tuple[int, str] | None:
        """Publish the chain head: gauges, the signed anchor file, a journal line."""
        return self.heads.publish(journal)

    def _checkpoint(self, conn: Connection, reason: str) -> int:
        head = store.chain_head(conn, self.host_id)
        info = {
            "reason": reason,
            "head_seq": head[0] if head is not None else None,
            "head_hash": head[1] if head is not None else None,
            "incidents": store.count_by_status(conn, self.host_id),
        }
        return append_record(conn, self.host_id, self.hostname, "checkpoint", _now(), info=info)

    def _maybe_checkpoint(self, conn: Connection) -> bool:
        types = store.recent_record_types(conn, self.host_id, self.checkpoint_every)
        if len(types) < self.checkpoint_every:
            return False
        if any(t in store.CHECKPOINT_TYPES for t in types):
            return False
        self._checkpoint(conn, "interval")
        return True

    # --- findings ----------------------------------------------------------------------
    def record(self, finding: IncidentFinding) -> Recorded | None:
        """Open or update the incident for `finding`; None when it added nothing new."""
        checkpointed = False

        def tx(conn: Connection) -> Recorded | None:
            nonlocal checkpointed
            cutoff = finding.time - self.dedup_window
            row = store.open_incident(conn, self.host_id, finding.dedup_key, cutoff)
            now = _now()
            if row is not None:
                doc = merge(document_from_row(row), finding)
                if doc is None:
                    return None
                store.update_incident_by_uid(conn, doc["uid"], row_values(doc))
                append_record(conn, self.host_id, self.hostname, "update", now, incident=doc)
                created = False
            else:
                doc = new_document(finding, new_uid(), self.host_id)
                store.insert_incident(conn, row_values(doc))
                append_record(conn, self.host_id, self.hostname, "incident", now, incident=doc)
                created = True
            merged = self._supersede(conn, finding.supersedes, doc["uid"], now)
            checkpointed = self._maybe_checkpoint(conn)
            return Recorded(doc["uid"], created, merged)

        result = transact(self.engine, tx)
        if result is not None:
            if result.created:
                metrics.INCIDENTS_OPENED.labels(finding.rule_id, str(finding.severity)).inc()
            self.refresh_open_gauge()
        if checkpointed:
            metrics.CHAIN_CHECKPOINT.set_to_current_time()
        if result is not None:
            self.publish_head(journal=checkpointed)
        return result

    def _supersede(
        self, conn: Connection, keys: tuple[str, ...], into: str, now: datetime
    ) -> tuple[str, ...]:
        if not keys:
            return ()
        rows = store.open_policy_alerts(conn, self.host_id, keys)
        merged = []
        for r in rows:
            doc = document_from_row(r)
            doc.update(
                status="closed",
                acted_by=SYSTEM_ACTOR,
                note=f"merged into incident {into}",
                updated_at=max(doc["updated_at"], iso(now)),
            )
            store.update_incident_by_id(conn, r.id, row_values(doc))
            append_record(conn, self.host_id, self.hostname, "status", now, incident=doc)
            merged.append(doc["uid"])
        return tuple(merged)

    def refresh_open_gauge(self) -> None:
        refresh_open_gauge(self.engine, self.host_id)


def refresh_open_gauge(engine: Engine, host_id: str) -> None:
    counts = store.count_open_by_severity(engine, host_id)
    for sev in ("info", "low", "medium", "high", "critical"):
        metrics.INCIDENTS_OPEN.labels(sev).set(int(counts.get(sev, 0)))


def set_status(
    engine: Engine, incident_id: int, status: str, by: str, note: str | None
) -> dict[str, Any]:
    """Acknowledge or close an incident (by row id); returns the new document."""
    allowed_from = TRANSITIONS.get(status)
    if allowed_from is None:
        raise IncidentError(f"unknown status {status!r}")

    def tx(conn: Connection) -> dict[str, Any]:
        row = store.incident_by_id(conn, incident_id)
        if row is None:
            raise IncidentError(f"no incident with id {incident_id}")
        if row.status not in allowed_from:
            raise IncidentError(
                f"incident {incident_id} is {row.status}; it can be {status} only when "
                + " or ".join(allowed_from)
            )
        now = _now()
        doc = document_from_row(row)
        doc.update(
            status=status,
            acted_by=storable_text(by),
            note=storable_text(note),
            updated_at=max(doc["updated_at"], iso(now)),
        )
        store.update_incident_by_id(conn, row.id, row_values(doc))
        hostname = hostname_of(conn, row.host_id)
        append_record(conn, row.host_id, hostname, "status", now, incident=doc)
        return doc

    doc = transact(engine, tx)
    refresh_open_gauge(engine, doc["host_id"])
    return doc


def _now() -> datetime:
    return datetime.now(UTC)


def _as_utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
