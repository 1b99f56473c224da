"""Scheduled jobs against a real SQLite store and a real APScheduler.

Retention (what is deleted, what an open incident keeps), the persisted schedule (a
missed job runs once on start, a job not yet due waits, across restarts of a real
agent), and failure isolation (a failing job is counted, logged and retried).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from agent import jobs, metrics
from agent.config import Settings
from agent.events import Decision, FileAction, FileEvent, Flow, Severity
from agent.runtime import Runtime
from agent.store import jobstate, retention
from agent.store.db import make_engine, register_host, upgrade
from agent.store.models import DecisionRow, FileEventRow, FlowRow, IncidentRow, JobState
from agent.store.writer import write_batch
from tests.conftest import insert_incident, wait_until

HOST = "h" * 32
OTHER = "o" * 32
NOW = datetime.now(UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The local SQLite store and a fleet PostgreSQL store (skips if unreachable)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'agent.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    eng = make_engine(url)
    upgrade(eng)
    register_host(eng, HOST, "test-host")
    yield eng
    eng.dispose()


def runtime(engine: Engine, tmp_path: Path, **jobs_cfg: Any) -> Runtime:
    settings = Settings(agent={"state_dir": str(tmp_path)}, jobs=jobs_cfg)
    return Runtime(settings, engine, HOST, "test-host")


def decision(rule: str = "r1") -> Decision:
    return Decision(rule, "pack", Severity.HIGH, "alert", "v1", "because")


def file_event(age_days: float, decided: bool = False) -> FileEvent:
    return FileEvent(
        FileAction.WRITTEN,
        f"/data/{age_days}.bin",
        time=NOW - timedelta(days=age_days),
        decisions=(decision(),) if decided else (),
    )


def flow(age_days: float) -> Flow:
    end = NOW - timedelta(days=age_days)
    return Flow("tcp", "10.0.0.1", 40000, "203.0.113.9", 443, end - timedelta(seconds=5), end)


def incident(engine: Engine, status: str, evidence: dict[str, Any]) -> None:
    insert_incident(
        engine,
        HOST,
        status,
        evidence,
        uid=f"{status}{len(str(evidence))}".ljust(32, "0")[:32],
        dedup_key=status + str(len(evidence)),
        at=NOW - timedelta(days=400),
    )


def uids(engine: Engine, model: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(model.uid)).scalars())


# --- retention ------------------------------------------------------------------------
def test_retention_deletes_old_rows_and_keeps_recent_ones(engine: Engine) -> None:
    old_ev, new_ev = file_event(100, decided=True), file_event(1, decided=True)
    old_flow, new_flow = flow(100), flow(1)
    write_batch(engine, HOST, [old_ev, new_ev, old_flow, new_flow])
    foreign = file_event(200)
    write_batch(engine, OTHER, [foreign])

    counts = retention.apply_retention(engine, HOST, days=90)

    assert counts == {"file_events": 1, "flows": 1, "decisions": 1}
    assert uids(engine, FileEventRow) == {new_ev.uid, foreign.uid}  # other hosts untouched
    assert uids(engine, FlowRow) == {new_flow.uid}
    assert uids(engine, DecisionRow) == {f"{new_ev.uid}:0"}


def test_retention_never_deletes_incidents_and_keeps_open_evidence(engine: Engine) -> None:
    cited_event = file_event(300, decided=True)
    cited_flow = flow(300)
    judged = file_event(300, decided=True)  # named only through its decision's uid
    closed_case = file_event(300, decided=True)
    plain = file_event(300)
    write_batch(engine, HOST, [cited_event, cited_flow, judged, closed_case, plain])
    incident(
        engine,
        "open",
        {"file_events": [cited_event.uid], "chain": [{"flow": cited_flow.uid}]},
    )
    incident(engine, "acknowledged", {"decisions": [f"{judged.uid}:0"]})
    incident(engine, "closed", {"file_events": [closed_case.uid]})

    retention.apply_retention(engine, HOST, days=90)

    assert uids(engine, FileEventRow) == {cited_event.uid, judged.uid}
    assert uids(engine, FlowRow) == {cited_flow.uid}
    assert uids(engine, DecisionRow) == {f"{cited_event.uid}:0", f"{judged.uid}:0"}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IncidentRow)).scalar() == 3


def test_retention_works_past_chunks_full_of_protected_rows(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "RETENTION_CHUNK", 3)
    events = [file_event(200 + i) for i in range(10)]
    write_batch(engine, HOST, events)
    kept = [e.uid for e in events[:4]]  # the first chunk and a bit are all protected
    incident(engine, "open", {"file_events": kept})

    counts = retention.apply_retention(engine, HOST, days=90)

    assert counts["file_events"] == 6
    assert uids(engine, FileEventRow) == set(kept)


def test_retention_job_runs_through_the_scheduler_wrapper(engine: Engine, tmp_path: Path) -> None:
    write_batch(engine, HOST, [file_event(40), file_event(10)])
    spec = jobs.retention_job(runtime(engine, tmp_path, retention_days=30))
    assert spec is not None
    name, _interval, fn = spec
    before = metrics.JOB_RUNS.labels("retention", "success")._value.get()
    jobs._instrumented(name, fn, runtime(engine, tmp_path))()
    assert metrics.JOB_RUNS.labels("retention", "success")._value.get() == before + 1
    assert len(uids(engine, FileEventRow)) == 1
    assert jobstate.last_run(engine, HOST, "retention") is not None


# --- the persisted schedule -----------------------------------------------------------
@given(
    previous_age=st.one_of(st.none(), st.floats(-1e6, 1e8)),
    interval=st.floats(0.01, 1e7),
    delay=st.floats(0, 60),
)
def test_first_run_is_never_before_start_nor_later_than_its_slot(
    previous_age: float | None, interval: float, delay: float
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    previous = None if previous_age is None else now - timedelta(seconds=previous_age)
    first = jobs.first_run_time(previous, interval, now, delay)
    soon = now + timedelta(seconds=min(interval, delay))
    assert first >= soon
    if previous is not None and previous <= now:
        assert first == max(previous + timedelta(seconds=interval), soon)
    else:
        assert first == soon


def counting_job(name: str, interval: float, calls: list[float]) -> jobs.JobBuilder:
    def build(rt: Runtime) -> tuple[str, float, jobs.Job]:
        return name, interval, lambda: calls.append(time.monotonic())

    return build


def start_with(
    monkeypatch: pytest.MonkeyPatch, rt: Runtime, builders: list[jobs.JobBuilder]
) -> Any:
    monkeypatch.setattr(jobs, "JOB_BUILDERS", builders)
    monkeypatch.setattr(jobs, "FIRST_RUN_DELAY", 0.2)
    return jobs.start(rt)


def runs_of_one_job(
    monkeypatch: pytest.MonkeyPatch, rt: Runtime, name: str, interval: float, times: int
) -> list[float]:
    """When a scheduler of one job (every `interval` s) ran it, stopped after `times` runs."""
    calls: list[float] = []
    sched = start_with(monkeypatch, rt, [counting_job(name, interval, calls)])
    try:
        wait_until(lambda: len(calls) >= times)
    finally:
        sched.shutdown(wait=True)
    return calls


def test_a_job_missed_many_times_runs_once_on_start(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # last ran 10 days ago on an hourly interval: 240 missed slots
    jobstate.record_run(engine, HOST, "hourly", NOW - timedelta(days=10), ok=True)
    calls: list[float] = []
    sched = start_with(
        monkeypatch, runtime(engine, tmp_path), [counting_job("hourly", 3600, calls)]
    )
    try:
        wait_until(lambda: len(calls) >= 1)
        time.sleep(1.0)
        assert len(calls) == 1
        nxt = sched.get_job("hourly").next_run_time
        assert timedelta(minutes=59) < nxt - datetime.now(UTC) <= timedelta(hours=1)
    finally:
        sched.shutdown(wait=True)
    last = jobstate.last_run(engine, HOST, "hourly")
    assert last is not None and datetime.now(UTC) - last < timedelta(seconds=30)


def test_a_job_not_yet_due_waits_for_its_slot(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran_at = datetime.now(UTC) - timedelta(minutes=10)
    jobstate.record_run(engine, HOST, "hourly", ran_at, ok=True)
    calls: list[float] = []
    sched = start_with(
        monkeypatch, runtime(engine, tmp_path), [counting_job("hourly", 3600, calls)]
    )
    try:
        time.sleep(1.0)
        assert calls == []
        nxt = sched.get_job("hourly").next_run_time
        assert abs((nxt - (ran_at + timedelta(hours=1))).total_seconds()) < 1
    finally:
        sched.shutdown(wait=True)


def test_a_never_run_job_runs_soon_and_then_on_its_interval(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = runs_of_one_job(monkeypatch, runtime(engine, tmp_path), "fast", 0.5, times=3)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(0.3 < g < 3.0 for g in gaps), gaps


def test_a_failing_job_is_counted_logged_and_retried(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []
    done = threading.Event()

    def flaky(rt: Runtime) -> tuple[str, float, jobs.Job]:
        def run() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("disk on fire")
            done.set()

        return "flaky", 0.4, run

    failures = metrics.JOB_RUNS.labels("flaky", "failure")._value.get()
    sched = start_with(monkeypatch, runtime(engine, tmp_path), [flaky])
    try:
        assert done.wait(10), "the job was not retried after failing"
        assert sched.running
    finally:
        sched.shutdown(wait=True)
    assert metrics.JOB_RUNS.labels("flaky", "failure")._value.get() == failures + 1
    assert "job flaky failed" in caplog.text and "disk on fire" in caplog.text
    with engine.connect() as conn:
        state = conn.execute(
            select(JobState.value).where(JobState.name == "schedule/flaky")
        ).scalar()
    assert state["result"] == "success" and "last_success" in state


def test_a_failed_run_is_recorded_and_keeps_the_last_success(engine: Engine) -> None:
    t1, t2 = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    jobstate.record_run(engine, HOST, "j", t1, ok=True)
    jobstate.record_run(engine, HOST, "j", t2, ok=False)
    with engine.connect() as conn:
        state = conn.execute(select(JobState.value).where(JobState.name == "schedule/j")).scalar()
    assert state == {
        "last_run": t2.isoformat(),
        "result": "failure",
        "last_success": t1.isoformat(),
    }
    assert jobstate.last_run(engine, HOST, "j") == t2
    assert jobstate.last_run(engine, OTHER, "j") is None


def test_an_unreadable_store_does_not_stop_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no migrations: job_state does not exist, so reading and recording both fail
    eng = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        runs_of_one_job(monkeypatch, runtime(eng, tmp_path), "j", 0.3, times=2)
    finally:
        eng.dispose()


@pytest.mark.slow
def test_schedule_survives_agent_restarts(run_agent: Any, agent_config: dict[str, Any]) -> None:
    """A real agent, restarted twice. Each restart ages one job's record in job_state (as
    if its slot passed while the agent was down): that job runs once on start, and the
    other, not yet due, does not run at all."""
    agent_config["jobs"] = {"maintenance_interval": 3600, "retention_interval": 3600}
    db = Path(agent_config["agent"]["state_dir"]) / "agent.db"

    def runs(agent: Any, job: str) -> float:
        labels = {"job": job, "result": "success"}
        return agent.metric("egress_agent_job_runs_total", labels) or 0.0

    def age(job: str) -> None:
        eng = make_engine(f"sqlite:///{db}")
        host_id = (db.parent / "host_id").read_text().strip()
        ran = jobstate.last_run(eng, host_id, job)
        assert ran is not None and datetime.now(UTC) - ran < timedelta(minutes=5)
        jobstate.record_run(eng, host_id, job, datetime.now(UTC) - timedelta(days=3), True)
        eng.dispose()

    first = run_agent(agent_config)
    first.wait_metrics()
    wait_until(lambda: runs(first, "maintenance") == runs(first, "retention") == 1, timeout=90)
    assert first.stop() == 0

    for due, not_due in (("retention", "maintenance"), ("maintenance", "retention")):
        age(due)
        agent = run_agent(agent_config)
        agent.wait_metrics()
        # the aged job was due: once it ran, the scheduler is up and past its start delay
        wait_until(lambda: runs(agent, due) == 1, due, 90)  # noqa: B023 (waited on here)
        time.sleep(1)
        assert runs(agent, due) == 1 and runs(agent, not_due) == 0, due
        assert agent.stop() == 0


def test_a_broken_job_builder_leaves_the_other_jobs_running(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rt: Runtime) -> tuple[str, float, jobs.Job]:
        raise ValueError("bad export_dir")

    calls: list[float] = []
    sched = start_with(
        monkeypatch, runtime(engine, tmp_path), [broken, counting_job("ok", 0.3, calls)]
    )
    try:
        wait_until(lambda: len(calls) >= 1)
        assert [j.id for j in sched.get_jobs()] == ["ok"]
    finally:
        sched.shutdown(wait=True)


def test_maintenance_truncates_the_wal_and_the_size_gauge_follows(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("WAL checkpoints are SQLite's")
    write_batch(engine, HOST, [file_event(1) for _ in range(2000)])
    wal = Path(str(engine.url.database) + "-wal")
    assert wal.stat().st_size > 0
    rt = runtime(engine, tmp_path)
    spec = jobs.maintenance_job(rt)
    assert spec is not None
    spec[2]()
    assert wal.stat().st_size == 0
    monkeypatch.setattr(jobs, "JOB_BUILDERS", [])
    sched = jobs.start(rt)
    sched.shutdown(wait=True)
    size = metrics.STORE_SIZE.collect()[0].samples[0].value
    db = str(engine.url.database)
    on_disk = sum(
        Path(db + s).stat().st_size for s in ("", "-wal", "-shm") if Path(db + s).exists()
    )
    assert size == on_disk > 0
