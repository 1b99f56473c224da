"""Retention: deleting old file events, flows and decisions, sparing open incidents' evidence.

The `retention` job (agent/jobs.py) calls `apply_retention` every
`jobs.retention_interval`. Incidents are never deleted; what an open (not closed)
incident's evidence names is kept — the events and flows, their decisions, and the event
a named decision judged — so an analyst never opens an incident whose evidence is gone.
Rows go in chunks of `RETENTION_CHUNK`, one transaction each, so the store writer is
never blocked long. On a PostgreSQL store partitioned by day (partitions.py) whole days
are dropped instead, for every host at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select

from agent.store import partitions
from agent.store.tables import decisions, file_events, flows, incidents

__all__ = ["RETENTION_CHUNK", "apply_retention", "protected_uids"]

RETENTION_CHUNK = 5000  # rows per delete transaction, so the writer is never blocked long
_UID = re.compile(r"^[0-9a-f]{32}(:[0-9]+)?$")  # an event uid, or a decision's


def _uids_in(value: Any) -> Iterator[str]:
    """Every event or decision uid anywhere in an incident's evidence document."""
    if isinstance(value, str):
        if _UID.match(value):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _uids_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _uids_in(v)


def protected_uids(engine: Engine, host_id: str | None) -> set[str]:
    """Uids of events, flows and decisions that a not-closed incident's evidence names.

    `host_id` None: every host's (a day partition of a fleet store holds them all).
    """
    uids: set[str] = set()
    query = select(incidents.c.uid, incidents.c.evidence).where(incidents.c.status != "closed")
    if host_id is not None:
        query = query.where(incidents.c.host_id == host_id)
    with engine.connect() as conn:
        rows = conn.execute(query)
        for incident_uid, evidence in rows:
            uids.add(incident_uid)
            uids.update(_uids_in(evidence))
    return uids


def _delete_older(
    engine: Engine, table: Any, when: Any, host_id: str, cutoff: datetime, keep: set[str]
) -> int:
    """Delete rows of `table` older than `cutoff` in chunks by id.

    A row is spared when its uid is in `keep` — or, for a decision, the uid of the event
    it judged.
    """
    refs = [table.c.uid] + ([table.c.subject_uid] if "subject_uid" in table.c else [])
    deleted = 0
    after: int | None = None
    while True:
        query = select(table.c.id, *refs).where(table.c.host_id == host_id, when < cutoff)
        if after is not None:
            query = query.where(table.c.id > after)
        with engine.begin() as conn:
            old = conn.execute(query.order_by(table.c.id).limit(RETENTION_CHUNK)).all()
            ids = [row[0] for row in old if keep.isdisjoint(row[1:])]
            if ids:
                conn.execute(delete(table).where(table.c.id.in_(ids)))
        deleted += len(ids)
        if len(old) < RETENTION_CHUNK:
            return deleted
        after = old[-1][0]


def apply_retention(engine: Engine, host_id: str, days: int) -> dict[str, int]:
    """Delete this host's file events, flows and decisions older than `days` days.

    Returns the rows deleted (or dropped with their day) per table. On a store
    partitioned by day, whole days go for all hosts once all of a day is older than
    `days`; rows deleted one by one are only this host's in the default partition.
    """
    cutoff = datetime.now(UTC) - timedelta(days=days)
    with engine.connect() as conn:
        by_day = partitions.is_partitioned(conn)
    keep = protected_uids(engine, host_id)
    keep.update(uid.partition(":")[0] for uid in list(keep))  # decision uid -> its event
    if by_day:
        # whole days go for every host at once (the first agent to run does it, so the
        # smallest retention_days of the fleet decides), sparing every host's evidence;
        # then this host's old rows in the default partition go one by one, just as spared
        everyone = protected_uids(engine, None)
        everyone.update(uid.partition(":")[0] for uid in list(everyone))
        dropped = partitions.drop_expired(engine, cutoff, everyone)
        for name, col in partitions.PARTITIONED.items():
            default = partitions.default_partition(name)
            dropped[name] += _delete_older(
                engine, default, default.c[col], host_id, cutoff, everyone
            )
        return dropped
    counts: dict[str, int] = {}
    for table, when in (
        (file_events, file_events.c.time),
        (flows, flows.c.end_time),
        (decisions, decisions.c.time),
    ):
        counts[table.name] = _delete_older(engine, table, when, host_id, cutoff, keep)
    return counts
