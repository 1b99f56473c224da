"""The classify stage's workers: a few threads that take light jobs from one queue.

Not `concurrent.futures.ThreadPoolExecutor`: a burst of small files is one job per file,
and there each job cost a `Future` (a condition with its lock), a work item, a semaphore
probe on submit, a done-callback and a `notify_all` of the future's condition — about as
much CPU as hashing and judging a 512-byte file. Here a `Job` is six slots; a batch of
jobs goes onto the queue under one lock with one wake-up per idle worker, and a finished
job is handed to one callback (`finished`, the stage's), which decides whom to wake.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from agent.events import Artefact
from agent.liveness import name_current_thread

log = logging.getLogger(__name__)


class Job:
    """One file's classification: its path and identity, then its artefact or the error
    the classifier raised. `done` and `waiters` belong to the stage's lock."""

    __slots__ = ("artefact", "done", "error", "key", "path", "waiters")

    def __init__(self, path: str, key: tuple[object, ...]) -> None:
        self.path = path
        self.key = key
        self.artefact: Artefact | None = None
        self.error: BaseException | None = None
        self.done = False
        self.waiters = 0  # threads waiting for this job (they are woken when it is done)


class WorkPool:
    """`size` threads named `<name>_<i>`, started as work first needs them, that run
    `run(job.path)` for each job in order and then `finished(job)`."""

    def __init__(
        self,
        size: int,
        name: str,
        run: Callable[[str], Artefact],
        finished: Callable[[Job], None],
    ) -> None:
        self.size = max(1, size)
        self.name = name
        self._run = run
        self._finished = finished
        self._queue: deque[Job] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def submit_many(self, jobs: Sequence[Job]) -> None:
        """Queue the jobs in order (refused after `shutdown`: RuntimeError, as the
        executor did)."""
        if not jobs:
            return
        with self._lock:
            if self._stopping:
                raise RuntimeError("classify workers are shut down")
            self._queue.extend(jobs)
            wake = min(self._idle, len(jobs))
            if wake:
                self._work.notify(wake)
            # a thread more for work that the idle ones do not cover, up to `size`
            missing = min(self.size - len(self._threads), len(jobs) - wake)
            for _ in range(max(0, missing)):
                # daemon: the stage's close (a stop hook) shuts the pool down and waits
                # for it; one that never ran its hooks must still let the process exit,
                # as the executor's exit hook did (a queued job only saves work: the
                # next event of the file classifies it again)
                t = threading.Thread(
                    target=self._loop, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()

    def shutdown(self, wait: bool = True) -> None:
        """Let the workers finish what is queued, then end them (joined when `wait`)."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            threads = list(self._threads)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()

    def _loop(self) -> None:
        name_current_thread()
        queue, work = self._queue, self._work
        while True:
            with self._lock:
                while not queue:
                    if self._stopping:
                        return
                    self._idle += 1
                    try:
                        work.wait()
                    finally:
                        self._idle -= 1
                job = queue.popleft()
            try:
                job.artefact = self._run(job.path)
            except BaseException as e:  # the classifier never raises; if it does, say so
                job.error = e
            try:
                self._finished(job)
            except Exception:  # a bug in the callback must not end the worker
                log.exception("classify worker: finishing the job of %r failed", job.path)
