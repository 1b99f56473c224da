"""Read side of the incident log: listing, finding one incident, loading the chain.

Used by the CLI, the verifier and the exporters; nothing here writes. The rows come from
agent/store/incidents.py; this module turns them into incident documents and chain entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.events import Severity
from agent.incidents.chain import ChainEntry
from agent.incidents.model import document_from_row, iso
from agent.store import incidents as store
from agent.store.incidents import host_ids

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from agent.store.models import ChainRecord

__all__ = [
    "SEVERITIES",
    "at_least",
    "chain_entries",
    "entry_of",
    "find_incident",
    "host_ids",
    "incident_documents",
    "list_incidents",
]

SEVERITIES = tuple(str(s) for s in Severity)


def at_least(severity: str) -> list[str]:
    rank = Severity(severity).rank
    return [str(s) for s in Severity if s.rank >= rank]


def list_incidents(
    engine: Engine,
    since: datetime | None = None,
    min_severity: str | None = None,
    status: str | None = None,
    rule: str | None = None,
    host: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first, as documents plus their row `id` (what `show`, `ack` and `close` take)."""
    with store.reading(engine) as s:
        severities = at_least(min_severity) if min_severity else None
        rows = store.incident_rows(s, since, severities, status, rule, host, limit)
        names = store.hostnames(s)
        out = []
        for row in rows:
            doc = {"id": row.id, **document_from_row(row)}
            doc["hostname"] = names.get(row.host_id, row.host_id)
            out.append(doc)
        return out


def find_incident(engine: Engine, ident: str) -> dict[str, Any] | None:
    """By row id, or by uid (or a unique uid prefix of at least 6 characters)."""
    with store.reading(engine) as s:
        if ident.isascii() and ident.isdigit() and int(ident) < 2**63:  # a row id fits
            rows = store.incident_rows_by_id(s, int(ident))
        else:
            rows = []
        if not rows and len(ident) >= 6:
            rows = store.incident_rows_by_uid_prefix(s, ident)
        if len(rows) != 1:
            return None
        row = rows[0]
        doc = {"id": row.id, **document_from_row(row)}
        doc["hostname"] = store.hostname(s, row.host_id)
        doc["chain"] = [
            {"seq": c.seq, "type": c.record_type, "time": iso(c.time), "hash": c.hash}
            for c in store.incident_chain(s, row.host_id, row.uid)
        ]
        return doc


def entry_of(c: ChainRecord) -> ChainEntry:
    return ChainEntry(
        seq=int(c.seq),
        host_id=c.host_id,
        record_type=c.record_type,
        time=iso(c.time if c.time.tzinfo else c.time.replace(tzinfo=UTC)),
        incident_uid=c.incident_uid,
        payload=c.payload,
        prev_hash=c.prev_hash,
        hash=c.hash,
    )


def chain_entries(
    engine: Engine, host: str | None = None, after_seq: int | None = None
) -> Iterator[ChainEntry]:
    """Chain records ordered by (host, seq), streamed."""
    with store.reading(engine) as s:
        for c in store.chain_records(s, host, after_seq):
            yield entry_of(c)


def incident_documents(engine: Engine, host: str | None = None) -> dict[str, dict[str, Any]]:
    with store.reading(engine) as s:
        return {row.uid: document_from_row(row) for row in store.all_incident_rows(s, host)}
