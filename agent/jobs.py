"""Scheduled jobs (APScheduler 3): maintenance, retention, rescans, exports.

This module only schedules: what each job does to the store is in agent/store
(maintenance.py, retention.py, partitions.py; the runs themselves in jobstate.py). Every
job runs through `_instrumented`, which records runs, failures and durations in
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
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from agent import metrics
from agent.incidents.export.job import export_job as incident_export_job
from agent.runtime import Job, JobBuilder, JobSpec
from agent.sensors.files import inventory_rescan_job as files_inventory_rescan_job
from agent.store import jobstate, maintenance, partitions, retention

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger(__name__)


# a job that never ran, or whose slot passed while the agent was down, runs this soon
# after start: late enough not to compete with start-up, early enough to be useful
FIRST_RUN_DELAY = 5.0


# --- persisted schedule -------------------------------------------------------------
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
            jobstate.record_run(rt.engine, rt.host_id, name, when, ok)
        except Exception:  # the store may be down; the job ran, the next start may rerun it
            log.warning("job %s: cannot record its run in job_state", name, exc_info=True)

    return run


# --- maintenance ----------------------------------------------------------------------
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
        maintenance.checkpoint_and_optimize(rt.engine)  # SQLite: WAL folded, statistics

    return "maintenance", rt.settings.jobs.maintenance_interval, run


# --- retention ------------------------------------------------------------------------
def retention_job(rt: Runtime) -> JobSpec | None:
    """Delete events, flows and decisions older than N days; incidents are never touched
    (nor what an open incident's evidence names: agent/store/retention.py)."""

    def run() -> None:
        days = rt.settings.jobs.retention_days
        counts = retention.apply_retention(rt.engine, rt.host_id, days)
        log.info(
            "retention: deleted rows older than %d days: %s",
            days,
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
    metrics.STORE_SIZE.set_function(lambda: maintenance.store_size_bytes(rt.engine))
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
            previous = jobstate.last_run(rt.engine, rt.host_id, name)
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
