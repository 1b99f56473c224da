"""The `job_state` table: what scheduled jobs and the incident chain keep between runs.

One JSON value per (name, host): a job's schedule (`schedule/<job>`: when it last ran,
its result, its last success), the incident export's cursor, the fleet store's signed
chain heads. The scheduler (agent/jobs.py), the export job and the head publisher call
these narrow functions; none of them writes SQL of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from agent.store.tables import job_state

__all__ = ["job_value", "job_values", "last_run", "put_job_value", "record_run"]


def job_value(engine: Engine, name: str, host_id: str) -> Any:
    """The JSON value a job keeps for `host_id` in `job_state` (None when it has none)."""
    with engine.connect() as conn:
        return conn.execute(
            select(job_state.c.value).where(
                job_state.c.name == name, job_state.c.host_id == host_id
            )
        ).scalar()


def put_job_value(engine: Engine, name: str, host_id: str, value: Mapping[str, Any]) -> None:
    """Insert or replace the JSON value a job keeps for `host_id` in `job_state`."""
    # the dialect's own insert, imported here: importing the PostgreSQL dialect (all its
    # drivers) at the daemon's start cost every SQLite agent about 0.05 s of CPU
    now = datetime.now(UTC)
    value = dict(value)
    row = {"name": name, "host_id": host_id, "value": value, "updated_at": now}
    keys, changed = ["name", "host_id"], {"value": value, "updated_at": now}
    stmt: Any
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(job_state).values(**row)
        stmt = pg.on_conflict_do_update(index_elements=keys, set_=changed)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(job_state).values(**row)
        stmt = lite.on_conflict_do_update(index_elements=keys, set_=changed)
    with engine.begin() as conn:
        conn.execute(stmt)


def job_values(engine: Engine, name: str, host_id: str | None = None) -> list[tuple[str, Any]]:
    """(host id, value) of every host's `job_state` row `name` (or only `host_id`'s)."""
    query = select(job_state.c.host_id, job_state.c.value).where(job_state.c.name == name)
    if host_id is not None:
        query = query.where(job_state.c.host_id == host_id)
    with engine.connect() as conn:
        return [(str(h), v) for h, v in conn.execute(query).all()]


# --- a scheduled job's own runs ---------------------------------------------------------
def _schedule_key(job: str) -> str:
    return f"schedule/{job}"


def last_run(engine: Engine, host_id: str, job: str) -> datetime | None:
    """When `job` last ran on this host (success or failure); None when never or unreadable."""
    value = job_value(engine, _schedule_key(job), host_id)
    if not isinstance(value, dict) or not isinstance(value.get("last_run"), str):
        return None
    try:
        when = datetime.fromisoformat(value["last_run"])
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def record_run(engine: Engine, host_id: str, job: str, when: datetime, ok: bool) -> None:
    """Keep `job`'s run at `when` and its result; a failure keeps the last success."""
    key = _schedule_key(job)
    value = {"last_run": when.isoformat(), "result": "success" if ok else "failure"}
    with engine.begin() as conn:
        where = (job_state.c.name == key, job_state.c.host_id == host_id)
        previous = conn.execute(select(job_state.c.value).where(*where)).scalar()
        if ok:
            value["last_success"] = value["last_run"]
        elif isinstance(previous, dict) and "last_success" in previous:
            value["last_success"] = previous["last_success"]
        if previous is None:
            conn.execute(
                insert(job_state).values(name=key, host_id=host_id, value=value, updated_at=when)
            )
        else:
            conn.execute(update(job_state).where(*where).values(value=value, updated_at=when))
