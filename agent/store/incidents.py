"""The incidents' SQL: incident rows, chain records, lineage parents, and the read side.

The incident log (agent/incidents/log.py) decides what to write — documents, chain
payloads, hashes — and these narrow functions are the only place it meets the tables,
so the schema can change here without the log's logic moving. Functions taking a
`Connection` run inside the caller's transaction (a row and the chain record that
vouches for it commit together); `transact` is that transaction, retried when another
writer took the chain head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from agent.store import tables as t

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from agent.store.models import ChainRecord, IncidentRow

log = logging.getLogger(__name__)

T = TypeVar("T")
CHECKPOINT_TYPES = ("genesis", "checkpoint")


def transact(engine: Engine, fn: Callable[[Connection], T], races: int = 50, outages: int = 3) -> T:
    """Run `fn` in a transaction, retrying when another writer took the chain head.

    A lost race (IntegrityError on the chain's key) is retried up to `races` times; a
    store that is locked or unreachable (OperationalError) only `outages` times, then the
    error goes to the caller, which keeps the work for later.
    """
    delay = 0.01
    lost = failed = 0
    while True:
        try:
            with engine.begin() as conn:
                return fn(conn)
        except IntegrityError as e:
            lost += 1
            if lost >= races:
                raise
            log.debug("incident log write raced (%s); retrying", type(e.orig).__name__)
        except OperationalError:
            failed += 1
            if failed >= outages:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


# --- chain records ------------------------------------------------------------------
def chain_head(conn: Connection, host_id: str) -> tuple[int, str] | None:
    """(seq, hash) of the newest record of `host_id`'s chain; None before its genesis."""
    head = conn.execute(
        select(t.incident_chain.c.seq, t.incident_chain.c.hash)
        .where(t.incident_chain.c.host_id == host_id)
        .order_by(t.incident_chain.c.seq.desc())
        .limit(1)
    ).first()
    return (head.seq, head.hash) if head is not None else None


def has_chain(conn: Connection, host_id: str) -> bool:
    return (
        conn.execute(
            select(t.incident_chain.c.seq).where(t.incident_chain.c.host_id == host_id).limit(1)
        ).first()
        is not None
    )


def insert_chain_record(
    conn: Connection,
    *,
    seq: int,
    host_id: str,
    time: datetime,
    record_type: str,
    incident_uid: str | None,
    payload: str,
    prev_hash: str,
    hash: str,
) -> None:
    conn.execute(
        insert(t.incident_chain).values(
            seq=seq,
            host_id=host_id,
            time=time,
            record_type=record_type,
            incident_uid=incident_uid,
            payload=payload,
            prev_hash=prev_hash,
            hash=hash,
        )
    )


def last_checkpoint_time(engine: Engine, host_id: str) -> datetime | None:
    """When `host_id`'s chain last had a genesis or checkpoint record."""
    with engine.connect() as conn:
        last: datetime | None = conn.execute(
            select(func.max(t.incident_chain.c.time)).where(
                t.incident_chain.c.host_id == host_id,
                t.incident_chain.c.record_type.in_(CHECKPOINT_TYPES),
            )
        ).scalar()
    return last


def recent_record_types(conn: Connection, host_id: str, limit: int) -> list[str]:
    """The record types of the newest `limit` records of `host_id`'s chain, newest first."""
    rows = conn.execute(
        select(t.incident_chain.c.seq, t.incident_chain.c.record_type)
        .where(t.incident_chain.c.host_id == host_id)
        .order_by(t.incident_chain.c.seq.desc())
        .limit(limit)
    ).all()
    return [r.record_type for r in rows]


def hostname_of(conn: Connection, host_id: str) -> str:
    name = conn.execute(select(t.hosts.c.hostname).where(t.hosts.c.id == host_id)).scalar()
    return str(name) if name else host_id


# --- incident rows -------------------------------------------------------------------
def open_incident(
    conn: Connection, host_id: str, dedup_key: str, since: datetime
) -> Row[Any] | None:
    """The newest incident with `dedup_key`, not closed and updated at `since` or later."""
    return conn.execute(
        select(t.incidents)
        .where(
            t.incidents.c.host_id == host_id,
            t.incidents.c.dedup_key == dedup_key,
            t.incidents.c.status != "closed",
            t.incidents.c.updated_at >= since,
        )
        .order_by(t.incidents.c.updated_at.desc())
        .limit(1)
    ).first()


def open_policy_alerts(conn: Connection, host_id: str, keys: Sequence[str]) -> list[Row[Any]]:
    """Open `policy_alert` incidents with one of the dedup `keys` (a story absorbs them)."""
    return list(
        conn.execute(
            select(t.incidents).where(
                t.incidents.c.host_id == host_id,
                t.incidents.c.dedup_key.in_(keys),
                t.incidents.c.kind == "policy_alert",
                t.incidents.c.status != "closed",
            )
        ).all()
    )


def incident_by_id(conn: Connection, incident_id: int) -> Row[Any] | None:
    return conn.execute(select(t.incidents).where(t.incidents.c.id == incident_id)).first()


def insert_incident(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(insert(t.incidents).values(dict(values)))


def update_incident_by_uid(conn: Connection, uid: str, values: Mapping[str, Any]) -> None:
    conn.execute(update(t.incidents).where(t.incidents.c.uid == uid).values(dict(values)))


def update_incident_by_id(conn: Connection, incident_id: int, values: Mapping[str, Any]) -> None:
    conn.execute(update(t.incidents).where(t.incidents.c.id == incident_id).values(dict(values)))


def count_by_status(conn: Connection, host_id: str) -> dict[str, int]:
    """How many of `host_id`'s incidents are in each status."""
    return {
        str(r[0]): int(r[1])
        for r in conn.execute(
            select(t.incidents.c.status, func.count())
            .where(t.incidents.c.host_id == host_id)
            .group_by(t.incidents.c.status)
        ).all()
    }


def count_open_by_severity(engine: Engine, host_id: str) -> dict[str, int]:
    """How many of `host_id`'s incidents are not closed, per severity."""
    with engine.connect() as conn:
        return {
            str(r[0]): int(r[1])
            for r in conn.execute(
                select(t.incidents.c.severity, func.count())
                .where(t.incidents.c.host_id == host_id, t.incidents.c.status != "closed")
                .group_by(t.incidents.c.severity)
            ).all()
        }


# --- what correlation and the head publisher read ----------------------------------------
def lineage_parents(engine: Engine, sha: str, limit: int = 16) -> list[str]:
    """The artefacts `sha` inherited tags from, as the store's `lineage` table knows them."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(t.lineage.c.parent_sha256)
                .where(t.lineage.c.child_sha256 == sha)
                .limit(limit)
            ).scalars()
        )


def chain_head_now(engine: Engine, host_id: str) -> tuple[int, str] | None:
    """`chain_head` in a connection of its own (what the head publisher reads)."""
    with engine.connect() as conn:
        head = chain_head(conn, host_id)
    return (int(head[0]), str(head[1])) if head is not None else None


def hash_at(engine: Engine, host_id: str, seq: int) -> str | None:
    """The hash of record `seq` of `host_id`'s chain; None when there is no such record."""
    with engine.connect() as conn:
        value = conn.execute(
            select(t.incident_chain.c.hash).where(
                t.incident_chain.c.host_id == host_id, t.incident_chain.c.seq == seq
            )
        ).scalar()
    return str(value) if value is not None else None


# --- the read side: listing, one incident, the chain (the CLI, verifier, exporters) ---------
@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A session for the read side: one incident's several lookups share it (the ORM is
    imported here: the daemon writes through Core and never reads this way)."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        yield session


def host_ids(session: Session, host: str) -> list[str]:
    """The host ids `host` names (an id or a hostname); `[host]` when none is known."""
    found = list(
        session.execute(
            select(t.hosts.c.id).where((t.hosts.c.id == host) | (t.hosts.c.hostname == host))
        ).scalars()
    )
    return found or [host]


def hostnames(session: Session) -> dict[str, str]:
    return {r[0]: r[1] for r in session.execute(select(t.hosts.c.id, t.hosts.c.hostname))}


def hostname(session: Session, host_id: str) -> str | None:
    name: str | None = session.execute(
        select(t.hosts.c.hostname).where(t.hosts.c.id == host_id)
    ).scalar()
    return name


def incident_rows(
    session: Session,
    since: datetime | None = None,
    severities: Sequence[str] | None = None,
    status: str | None = None,
    rule: str | None = None,
    host: str | None = None,
    limit: int = 100,
) -> list[IncidentRow]:
    """Incident rows, newest update first, narrowed by whichever filters are given."""
    from agent.store.models import IncidentRow

    q = select(IncidentRow).order_by(IncidentRow.updated_at.desc(), IncidentRow.id.desc())
    if since is not None:
        q = q.where(IncidentRow.updated_at >= since)
    if severities:
        q = q.where(IncidentRow.severity.in_(severities))
    if status:
        q = q.where(IncidentRow.status == status)
    if rule:
        q = q.where(IncidentRow.rule_id == rule)
    if host:
        q = q.where(IncidentRow.host_id.in_(host_ids(session, host)))
    return list(session.execute(q.limit(limit)).scalars())


def incident_rows_by_id(session: Session, incident_id: int) -> list[IncidentRow]:
    from agent.store.models import IncidentRow

    return list(session.execute(select(IncidentRow).where(IncidentRow.id == incident_id)).scalars())


def incident_rows_by_uid_prefix(session: Session, prefix: str) -> list[IncidentRow]:
    from agent.store.models import IncidentRow

    q = select(IncidentRow).where(IncidentRow.uid.startswith(prefix, autoescape=True))
    return list(session.execute(q).scalars())


def all_incident_rows(session: Session, host: str | None = None) -> list[IncidentRow]:
    from agent.store.models import IncidentRow

    q = select(IncidentRow)
    if host is not None:
        q = q.where(IncidentRow.host_id.in_(host_ids(session, host)))
    return list(session.execute(q).scalars())


def incident_chain(session: Session, host_id: str, incident_uid: str) -> list[ChainRecord]:
    """The chain records of one incident, in chain order."""
    from agent.store.models import ChainRecord

    q = (
        select(ChainRecord)
        .where(ChainRecord.host_id == host_id, ChainRecord.incident_uid == incident_uid)
        .order_by(ChainRecord.seq)
    )
    return list(session.execute(q).scalars())


def chain_records(
    session: Session, host: str | None = None, after_seq: int | None = None
) -> Iterator[ChainRecord]:
    """Chain records ordered by (host, seq), streamed 500 at a time."""
    from agent.store.models import ChainRecord

    q = select(ChainRecord).order_by(ChainRecord.host_id, ChainRecord.seq)
    if host is not None:
        q = q.where(ChainRecord.host_id.in_(host_ids(session, host)))
    if after_seq is not None:
        q = q.where(ChainRecord.seq > after_seq)
    yield from session.execute(q.execution_options(yield_per=500)).scalars()
