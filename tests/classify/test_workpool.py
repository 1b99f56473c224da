"""The classify stage's worker pool (agent/classify/workpool.py): real threads, no mocks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.classify.workpool import Job, WorkPool
from agent.events import Artefact


def test_every_job_runs_once_and_is_finished(tmp_path: Path) -> None:
    ran: list[str] = []
    finished: list[Job] = []
    lock = threading.Lock()

    def run(path: str) -> Artefact:
        with lock:
            ran.append(path)
        return Artefact(sha256=None, size=len(path))

    def done(job: Job) -> None:
        with lock:
            finished.append(job)

    pool = WorkPool(3, "test-pool", run, done)
    jobs = [Job(f"/p/{i}", (f"/p/{i}",)) for i in range(500)]
    for i in range(0, 500, 50):
        pool.submit_many(jobs[i : i + 50])
    pool.shutdown(wait=True)  # what was queued is done before the workers end
    assert sorted(ran) == sorted(j.path for j in jobs)
    assert len(finished) == 500 and {id(j) for j in finished} == {id(j) for j in jobs}
    assert all(j.artefact is not None and j.artefact.size == len(j.path) for j in jobs)
    assert 1 <= len(pool._threads) <= 3
    assert all(t.name.startswith("test-pool_") and not t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError):
        pool.submit_many([Job("/late", ("/late",))])
    pool.shutdown(wait=True)  # twice is harmless (the stage's close after a test's)


def test_a_failing_job_carries_its_error_and_the_worker_goes_on() -> None:
    finished: list[Job] = []
    gate = threading.Event()

    def run(path: str) -> Artefact:
        if path == "/bad":
            raise ValueError("boom")
        return Artefact(sha256=None, size=1)

    def done(job: Job) -> None:
        finished.append(job)
        if job.path == "/first":
            raise RuntimeError("a bug in the callback")  # logged; the worker lives on
        if len(finished) == 3:
            gate.set()

    pool = WorkPool(1, "test-fail", run, done)
    jobs = [Job(p, (p,)) for p in ("/first", "/bad", "/good")]
    pool.submit_many(jobs)
    assert gate.wait(30)
    pool.shutdown(wait=True)
    assert isinstance(jobs[1].error, ValueError) and jobs[1].artefact is None
    assert jobs[2].error is None and jobs[2].artefact is not None
    assert len(pool._threads) == 1
