"""Read side of the incident log: listing, finding one incident, loading the chain.

Used by the CLI, the verifier and the exporters; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from agent.events import Severity
from agent.incidents.chain import ChainEntry
from agent.incidents.model import document_from_row, iso
from agent.store.models import ChainRecord, Host, IncidentRow

SEVERITIES = tuple(str(s) for s in Severity)


def at_least(severity: str) -> list[str]:
    rank = Severity(severity).rank
    return [str(s) for s in Severity if s.rank >= rank]


def host_ids(session: Session, host: str) -> list[str]:
    found = list(
        session.execute(
            select(Host.id).where((Host.id == host) | (Host.hostname == host))
        ).scalars()
    )
    return found or [host]


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
    with Session(engine) as s:
        q = select(IncidentRow).order_by(IncidentRow.updated_at.desc(), IncidentRow.id.desc())
        if since is not None:
            q = q.where(IncidentRow.updated_at >= since)
        if min_severity:
            q = q.where(IncidentRow.severity.in_(at_least(min_severity)))
        if status:
            q = q.where(IncidentRow.status == status)
        if rule:
            q = q.where(IncidentRow.rule_id == rule)
        if host:
            q = q.where(IncidentRow.host_id.in_(host_ids(s, host)))
        names: dict[str, str] = {r[0]: r[1] for r in s.execute(select(Host.id, Host.hostname))}
        out = []
        for row in s.execute(q.limit(limit)).scalars():
            doc = {"id": row.id, **document_from_row(row)}
            doc["hostname"] = names.get(row.host_id, row.host_id)
            out.append(doc)
        return out


def find_incident(engine: Engine, ident: str) -> dict[str, Any] | None:
    """By row id, or by uid (or a unique uid prefix of at least 6 characters)."""
    with Session(engine) as s:
        if ident.isascii() and ident.isdigit() and int(ident) < 2**63:  # a row id fits
            rows = list(
                s.execute(select(IncidentRow).where(IncidentRow.id == int(ident))).scalars()
            )
        else:
            rows = []
        if not rows and len(ident) >= 6:
            rows = list(
                s.execute(
                    select(IncidentRow).where(IncidentRow.uid.startswith(ident, autoescape=True))
                ).scalars()
            )
        if len(rows) != 1:
            return None
        row = rows[0]
        doc = {"id": row.id, **document_from_row(row)}
        doc["hostname"] = s.execute(select(Host.hostname).where(Host.id == row.host_id)).scalar()
        doc["chain"] = [
            {"seq": c.seq, "type": c.record_type, "time": iso(c.time), "hash": c.hash}
            for c in s.execute(
                select(ChainRecord)
                .where(ChainRecord.host_id == row.host_id, ChainRecord.incident_uid == row.uid)
                .order_by(ChainRecord.seq)
            ).scalars()
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
    with Session(engine) as s:
        q = select(ChainRecord).order_by(ChainRecord.host_id, ChainRecord.seq)
        if host is not None:
            q = q.where(ChainRecord.host_id.in_(host_ids(s, host)))
        if after_seq is not None:
            q = q.where(ChainRecord.seq > after_seq)
        for c in s.execute(q.execution_options(yield_per=500)).scalars():
            yield entry_of(c)


def incident_documents(engine: Engine, host: str | None = None) -> dict[str, dict[str, Any]]:
    with Session(engine) as s:
        q = select(IncidentRow)
        if host is not None:
            q = q.where(IncidentRow.host_id.in_(host_ids(s, host)))
        return {row.uid: document_from_row(row) for row in s.execute(q).scalars()}
