"""Scheduled jobs (APScheduler 3): maintenance, retention, rescans, exports.

Every job runs through `_instrumented`, which records runs, failures and durations in
metrics and logs a failure without letting it escape: a failing job never stops the
daemon, and it runs again at its next interval. Each run's time is persisted in the
`job_state` table (row `schedule/<job>`), and `start` schedules a job's first run from
it: a job whose interval passed while the agent was down runs once soon after start
(coalesced, not once per missed slot); one that is not yet due waits for its slot.
Jobs run one at a time: they all work on the same store, and on SQLite two of them
writing at once (retention deleting while maintenance runs ANALYZE, both due at start)
made one fail with "database is locked". The jobs are the builders listed in
`JOB_BUILDERS`, each next to the code it runs (the file sensor's inventory rescan, the
incident export): `(runtime) -> (name, interval, run)`, or None when its capability is
off in the config; a builder that raises costs only its own job.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, delete, insert, select, update

from agent import metrics
from agent.incidents.export.job import export_job as incident_export_job
from agent.runtime import Job, JobBuilder, JobSpec
from agent.sensors.files import inventory_rescan_job as files_inventory_rescan_job
from agent.store import partitions
from agent.store.models import DecisionRow, FileEventRow, FlowRow, IncidentRow, JobState

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger(__name__)


# a job that never ran, or whose slot passed while the agent was down, runs this soon
# after start: late enough not to compete with start-up, early enough to be useful
FIRST_RUN_DELAY = 5.0
RETENTION_CHUNK = 5000  # rows per delete transaction, so the writer is never blocked long
_UID = re.compile(r"^[0-9a-f]{32}(:[0-9]+)?$")  # an event uid, or a decision's


# --- persisted schedule -------------------------------------------------------------
def _state_key(job: str) -> str:
    return f"schedule/{job}"


def last_run(engine: Engine, host_id: str, job: str) -> datetime | None:
    """When `job` last ran on this host (success or failure), from `job_state`."""
    with engine.connect() as conn:
        value = conn.execute(
            select(JobState.value).where(
                JobState.name == _state_key(job), JobState.host_id == host_id
            )
        ).scalar()
    if not isinstance(value, dict) or not isinstance(value.get("last_run"), str):
        return None
    try:
        when = datetime.fromisoformat(value["last_run"])
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def record_run(engine: Engine, host_id: str, job: str, when: datetime, ok: bool) -> None:
    key = _state_key(job)
    value = {"last_run": when.isoformat(), "result": "success" if ok else "failure"}
    with engine.begin() as conn:
        where = (JobState.name == key, JobState.host_id == host_id)
        previous = conn.execute(select(JobState.value).where(*where)).scalar()
        if ok:
            value["last_success"] = value["last_run"]
        elif isinstance(previous, dict) and "last_success" in previous:
            value["last_success"] = previous["last_success"]
        if previous is None:
            conn.execute(
                insert(JobState).values(name=key, host_id=host_id, value=value, updated_at=when)
            )
        else:
            conn.execute(update(JobState).where(*where).values(value=value, updated_at=when))


def first_run_time(
    previous: datetime | None, interval: float, now: datetime, delay: float = FIRST_RUN_DELAY
) -> datetime:
    """The first run after start: its next slot, or soon if it never ran or was missed."""
    soon = now + timedelta(seconds=min(interval, delay))
    if previous is None or previous > now:  # never ran, or a clock that went backwards
        return soon
    return max(previous + timedelta(seconds=interval), soon)


def _instrumented(name: str, fn: Job, rt: Runtime | None = None) -> Job:
    def run() -> None:
        started = time.perf_counter()
        when = datetime.now(UTC)
        ok = False
        try:
            fn()
            ok = True
        except Exception:
            metrics.JOB_RUNS.labels(name, "failure").inc()
            metrics.JOB_LAST_FAILURE.labels(name).set_to_current_time()
            log.exception("job %s failed; it will run again at its next interval", name)
        else:
            metrics.JOB_RUNS.labels(name, "success").inc()
            metrics.JOB_LAST_SUCCESS.labels(name).set_to_current_time()
        finally:
            metrics.JOB_SECONDS.labels(name).observe(time.perf_counter() - started)
        if rt is None:
            return
        try:
            record_run(rt.engine, rt.host_id, name, when, ok)
        except Exception:  # the store may be down; the job ran, the next start may rerun it
            log.warning("job %s: cannot record its run in job_state", name, exc_info=True)

    return run


# --- maintenance ----------------------------------------------------------------------
def store_size_bytes(rt: Runtime) -> int:
    db = rt.engine.url.database
    if rt.engine.dialect.name != "sqlite" or not db:
        return 0
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += Path(db + suffix).stat().st_size
        except OSError:
            pass
    return total


def maintenance_job(rt: Runtime) -> JobSpec | None:
    """SQLite: check the file is still the store opened and sound (`PRAGMA quick_check`,
    agent/store/watch.py), fold the WAL back into the database and refresh the planner's
    statistics. PostgreSQL: create the event tables' day partitions a week ahead.

    (`egress_agent_store_size_bytes` needs no job: `start` makes it measure at each scrape.)
    """

    def run() -> None:
        watch = rt.store_watch
        if watch is not None:  # a swapped or broken file is reopened before the work below
            watch.check_integrity()
        if rt.engine.dialect.name == "postgresql":
            partitions.ensure_ahead(rt.engine)  # the days to come exist before their events
        if rt.engine.dialect.name == "sqlite":
            with rt.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                # ANALYZE reads, then writes its statistics: taking the write lock first
                # waits for the store writer (busy timeout) instead of failing at once
                # when both would upgrade a read lock
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    conn.exec_driver_sql("PRAGMA optimize")
                finally:
                    conn.exec_driver_sql("COMMIT")

    return "maintenance", rt.settings.jobs.maintenance_interval, run


# --- retention ------------------------------------------------------------------------
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
    query = select(IncidentRow.uid, IncidentRow.evidence).where(IncidentRow.status != "closed")
    if host_id is not None:
        query = query.where(IncidentRow.host_id == host_id)
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

    Incidents are never deleted. What an open (not closed) incident's evidence names is
    kept: the events and flows, their decisions, and the event a named decision judged.
    On a PostgreSQL store partitioned by day (agent/store/partitions.py) whole days are
    dropped instead of rows deleted, for all hosts, once all of a day is older than
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
    for model, when in (
        (FileEventRow, FileEventRow.time),
        (FlowRow, FlowRow.end_time),
        (DecisionRow, DecisionRow.time),
    ):
        table: Any = model.__table__
        counts[table.name] = _delete_older(engine, table, when, host_id, cutoff, keep)
    return counts


def retention_job(rt: Runtime) -> JobSpec | None:
    """Delete events, flows and decisions older than N days; incidents are never touched."""

    def run() -> None:
        counts = apply_retention(rt.engine, rt.host_id, rt.settings.jobs.retention_days)
        log.info(
            "retention: deleted rows older than %d days: %s",
            rt.settings.jobs.retention_days,
            ", ".join(f"{t}={n}" for t, n in counts.items()),
        )

    return "retention", rt.settings.jobs.retention_interval, run


JOB_BUILDERS: list[JobBuilder] = [
    maintenance_job,
    retention_job,
    files_inventory_rescan_job,
    incident_export_job,
]


def start(rt: Runtime, now: datetime | None = None) -> BackgroundScheduler:
    """Schedule every configured job from its persisted last run, and start the scheduler."""
    scheduler = BackgroundScheduler(
        timezone="UTC", job_defaults=job_kwargs(), executors={"default": ThreadPoolExecutor(1)}
    )
    metrics.STORE_SIZE.set_function(lambda: store_size_bytes(rt))
    now = now or datetime.now(UTC)
    for build in JOB_BUILDERS:
        try:
            spec = build(rt)
        except Exception:  # one broken job must not keep the daemon or the others down
            log.exception("job builder %s failed; that job will not run", build.__name__)
            metrics.JOB_RUNS.labels(build.__name__, "failure").inc()
            continue
        if spec is None:
            continue
        name, interval, fn = spec
        try:
            previous = last_run(rt.engine, rt.host_id, name)
        except Exception:
            log.warning("job %s: cannot read its last run; running it soon", name, exc_info=True)
            previous = None
        first = first_run_time(previous, interval, now)
        scheduler.add_job(
            _instrumented(name, fn, rt),
            "interval",
            seconds=interval,
            start_date=first,
            id=name,
            name=name,
            next_run_time=first,
        )
        log.debug("job %s: every %ss, first run at %s", name, interval, first.isoformat())
    scheduler.start()
    return scheduler


def job_kwargs() -> dict[str, Any]:
    # coalesce: runs missed while busy collapse into one; no grace limit, so a late run
    # still happens rather than being skipped
    return {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
