"""Scheduled jobs (APScheduler 3): maintenance, retention, rescans, exports.

Every job runs through `_instrumented`, which records runs, failures and durations in
metrics and logs a failure without letting it escape: a failing job never stops the
daemon, and it runs again at its next interval. Jobs are coalesced with a grace time,
so a job missed while the agent was down runs once on start, not once per missed slot.
Jobs that belong to a later capability register themselves in `JOB_BUILDERS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from agent import metrics

if TYPE_CHECKING:
    from agent.daemon import Runtime

log = logging.getLogger(__name__)

Job = Callable[[], object]
# each builder returns (name, interval seconds, callable) or None when off in config
JobBuilder = Callable[["Runtime"], "tuple[str, float, Job] | None"]


def _instrumented(name: str, fn: Job) -> Job:
    def run() -> None:
        started = time.perf_counter()
        try:
            fn()
        except Exception:
            metrics.JOB_RUNS.labels(name, "failure").inc()
            log.exception("job %s failed; it will run again at its next interval", name)
        else:
            metrics.JOB_RUNS.labels(name, "success").inc()
            metrics.JOB_LAST_SUCCESS.labels(name).set_to_current_time()
        finally:
            metrics.JOB_SECONDS.labels(name).observe(time.perf_counter() - started)

    return run


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


def maintenance_job(rt: Runtime) -> tuple[str, float, Job] | None:
    def run() -> None:
        if rt.engine.dialect.name == "sqlite":
            with rt.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.exec_driver_sql("PRAGMA optimize")
        metrics.STORE_SIZE.set(store_size_bytes(rt))

    return "maintenance", rt.settings.jobs.maintenance_interval, run


def retention_job(rt: Runtime) -> tuple[str, float, Job] | None:
    """Delete events, flows and decisions older than N days; incidents are never touched."""

    def run() -> None:
        cutoff = datetime.now(UTC) - timedelta(days=rt.settings.jobs.retention_days)
        with rt.engine.begin() as conn:
            for table, col in (
                ("file_events", "time"),
                ("flows", "end_time"),
                ("decisions", "time"),
            ):
                conn.execute(
                    text(f"DELETE FROM {table} WHERE host_id = :h AND {col} < :c"),
                    {"h": rt.host_id, "c": cutoff},
                )

    return "retention", rt.settings.jobs.retention_interval, run


JOB_BUILDERS: list[JobBuilder] = [
    maintenance_job,
    retention_job,
    # [files] inventory rescan job builder
    # [incidents] scheduled export job builder
]


def start(rt: Runtime) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    metrics.STORE_SIZE.set_function(lambda: store_size_bytes(rt))
    for build in JOB_BUILDERS:
        spec = build(rt)
        if spec is None:
            continue
        name, interval, fn = spec
        scheduler.add_job(
            _instrumented(name, fn),
            "interval",
            seconds=interval,
            id=name,
            name=name,
            next_run_time=datetime.now(UTC) + timedelta(seconds=min(interval, 5.0)),
        )
    scheduler.start()
    return scheduler


def job_kwargs() -> dict[str, Any]:
    return {"coalesce": True, "max_instances": 1}
