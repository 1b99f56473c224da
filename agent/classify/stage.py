"""The classify stage of the pipeline: file events in, the same events with an `Artefact` out.

Created/written/moved/scanned file events get their file classified (the destination
for a move); deleted files are gone and pass through; READ events only reuse what the
hash cache already knows (a read must not trigger a full hash). Flows pass through
unchanged. Classification runs on a bounded worker pool (`classify.workers`); the stage
waits for the result so events leave in the order they came, up to
`classify.event_timeout` seconds — past that the event goes on with `skipped="deferred"`
and the worker still finishes, so the next event for that file hits the cache. When
every worker is held by such an overdue file, events go on at once (`skipped="busy"`)
instead of each waiting out the timeout. A worker is never held by a parser for longer
than `classify.file_deadline` (the classifier's cooperative deadline; the event then
carries `skipped="timeout"`), which is also what bounds `close()` on SIGTERM.

A file's result is remembered by its identity (path, inode, size, mtime) for the next
events of the same unchanged file — a burst in a new directory brings each file as
`created` and then `written`, and a rescan may bring it again — so they take the same
artefact without a second job (see `_reusable` for which results are).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import TYPE_CHECKING

from agent import metrics
from agent.classify.classifier import Classifier
from agent.classify.hashing import HashCache
from agent.classify.lineage import store_lookup
from agent.classify.workpool import Job, WorkPool
from agent.events import Artefact, Event, FileAction, FileEvent

if TYPE_CHECKING:
    from agent.categories import CategoryProvider
    from agent.runtime import Runtime

log = logging.getLogger(__name__)

_CLASSIFY_ACTIONS = {FileAction.CREATED, FileAction.WRITTEN, FileAction.MOVED, FileAction.SCANNED}
RECENT_RESULTS = 4096  # finished results kept by file identity for the same file's next events


class ClassifyStage:
    """`Event -> Event`; registers `close` as a stop hook and `status` as a status hook.

    `categories` is the policy in force's (`PolicyHolder.categories`); without it the
    classifier matches no export-control category (tests of the other kinds).
    """

    def __init__(self, rt: Runtime, categories: CategoryProvider | None = None) -> None:
        s = rt.settings.classify
        self.enabled = s.enabled
        self.timeout = s.event_timeout
        cache_path = s.hash_cache or rt.settings.state_dir / "hashcache.db"
        try:
            self.cache = HashCache(cache_path)
        except (sqlite3.Error, OSError) as e:  # the cache only saves work: run without it
            log.error(
                "classify.hash_cache %s unusable (%s); hashing without a cache", cache_path, e
            )
            self.cache = HashCache(None)
        pruned = self.cache.prune()
        if pruned:
            log.info("hash cache: forgot %d file identities not seen for 90 days", pruned)
        self.classifier = Classifier(
            s,
            cache=self.cache,
            categories=categories,
            store_lookup=partial(store_lookup, rt.engine),
        )
        self.workers = s.workers
        self.pool = WorkPool(s.workers, "classify", self.classifier.classify_path, self._done)
        self._overdue: set[Job] = set()  # timed out, still running
        self._inflight: dict[tuple[object, ...], Job] = {}
        # identity -> (the keyword matcher it was matched with, its artefact)
        self._recent: OrderedDict[tuple[object, ...], tuple[object, Artefact]] = OrderedDict()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a job someone waits for is done
        rt.on_stop(self.close)
        rt.on_status(self.status)

    def __call__(self, event: Event) -> Event:
        new: list[Job] = []
        started = self._start(event, None, new)
        self.pool.submit_many(new)
        return started if isinstance(started, Event) else self._finish(*started)

    def batch(self, events: list[Event], beat: Callable[[], None]) -> list[Event]:
        """The pipeline's batch call: every file of the batch is handed to the pool before
        the first result is awaited, so all workers classify at once and the stage thread
        sleeps once per batch rather than once per file; events still leave in order, and
        `beat` (the stage's heartbeat) is called as each one is done."""
        ahead = _identities_ahead(events)
        new: list[Job] = []
        started = [self._start(e, ahead[i], new) for i, e in enumerate(events)]
        self.pool.submit_many(new)  # one lock and one wake-up per idle worker
        out: list[Event] = []
        for s in started:
            out.append(s if isinstance(s, Event) else self._finish(*s))
            beat()
        return out

    def _start(
        self, event: Event, ahead: tuple[object, ...] | None, new: list[Job]
    ) -> Event | tuple[FileEvent, Job]:
        """The event itself when it needs no classification, else it and its job; a job
        made here is appended to `new`, for the caller to submit.

        `ahead`: the identity of the same file from a later event of the batch, used when
        this one carries none (see `_identities_ahead`)."""
        if not self.enabled or not isinstance(event, FileEvent):
            return event
        if event.action == FileAction.READ:
            known = self.classifier.cached(event.current_path)
            return _with_artefact(event, known) if known is not None else event
        if event.action not in _CLASSIFY_ACTIONS:
            return event
        path = event.current_path
        # the sensor's lstat is in the event (no second system call); else look now
        key = _carried_identity(event) or ahead or _identity(path)
        matcher = self.classifier.matcher()
        with self._lock:  # one section: a job's `_done` moves it from `_inflight` to `_recent`
            recent = self._recent.get(key)
            if recent is not None and recent[0] is matcher:
                # the same unchanged file, just classified
                return _with_artefact(event, recent[1])
            # a second event for the same unchanged file waits for the first's result (a
            # job leaves `_inflight` as it is done, in this lock: one there is running)
            job = self._inflight.get(key)
            if job is None and len(self._overdue) >= self.workers:
                # every worker is stuck on an overdue file (a hung network share...):
                # waiting would stall the whole pipeline, so this event goes on now
                return self._busy(event)
            if job is None:
                job = self._inflight[key] = Job(path, key)
                new.append(job)
        return event, job

    def _finish(self, event: FileEvent, job: Job) -> Event:
        with self._lock:
            if not job.done and len(self._overdue) >= self.workers:
                done = None  # workers went overdue on earlier files of the batch
            else:
                done = self._wait(job, self.timeout)
        if done is None:
            return self._busy(event)
        if not done:
            metrics.CLASSIFY_SKIPPED.labels("deferred").inc()
            artefact = Artefact(sha256=None, size=event.size or 0, skipped="deferred")
            return _with_artefact(event, artefact)
        if job.error is not None:
            raise job.error  # the pipeline passes such an event on unchanged
        return _with_artefact(event, job.artefact)

    def _wait(self, job: Job, timeout: float) -> bool:
        """With the lock held: wait up to `timeout` for `job`; False (and the job counted
        overdue) when it is still running then."""
        if not job.done:
            deadline = time.monotonic() + timeout
            job.waiters += 1
            try:
                while not job.done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._overdue.add(job)
                        return False
                    self._ready.wait(left)
            finally:
                job.waiters -= 1
        return True

    @staticmethod
    def _busy(event: FileEvent) -> Event:
        metrics.CLASSIFY_SKIPPED.labels("busy").inc()
        return _with_artefact(event, Artefact(None, event.size or 0, skipped="busy"))

    def status(self) -> dict[str, object]:
        """For `egress-agent status`: the cache in use and the work in flight."""
        with self._lock:
            inflight = len(self._inflight)
        return {"classify": {"hash_cache": self.cache.path, "in_flight": inflight}}

    def _done(self, job: Job) -> None:
        """A worker's job is done: remembered for the same file's next events, and
        whoever waits for it woken."""
        artefact = job.artefact if job.error is None else None
        # the matcher now is the one the job used unless the categories changed meanwhile;
        # an entry from before a change is never used (see _start)
        matcher = self.classifier.matcher()
        key = job.key
        with self._lock:
            job.done = True
            self._overdue.discard(job)
            if self._inflight.get(key) is job:
                del self._inflight[key]
            if len(key) > 1 and artefact is not None and _reusable(artefact):
                self._recent[key] = (matcher, artefact)
                self._recent.move_to_end(key)
                if len(self._recent) > RECENT_RESULTS:
                    self._recent.popitem(last=False)
            if job.waiters:
                self._ready.notify_all()

    def close(self) -> None:
        self.classifier.stop()  # big hashes in flight give up; parsers end by their deadline
        self.pool.shutdown(wait=True)
        self.classifier.close()
        self.cache.close()


def _identities_ahead(events: list[Event]) -> list[tuple[object, ...] | None]:
    """For each event without an identity of its own (a regular file's `created` carries
    no size or mtime), the identity a later `written` of the same path and inode in the
    batch carries, else None.

    A file written into a watched directory comes as `created` then `written`, mostly in
    one batch. The `created` would be keyed by an lstat in this thread; the job it gets
    classifies whatever the file holds when it runs, which is what the `written` that
    follows describes — so the two share that job without the system call (and the GIL
    hand-over it costs). Should the file change again in between, a later event of it
    follows, as before.
    """
    out: list[tuple[object, ...] | None] = [None] * len(events)
    written: dict[str, tuple[object, ...]] = {}
    for i in range(len(events) - 1, -1, -1):
        e = events[i]
        if not isinstance(e, FileEvent) or e.inode is None:
            continue
        if e.action == FileAction.WRITTEN and (own := _carried_identity(e)) is not None:
            written[e.current_path] = own
        elif e.action == FileAction.CREATED and e.size is None:
            key = written.get(e.current_path)
            if key is not None and key[1] == e.inode:
                out[i] = key
    return out


def _reusable(a: Artefact) -> bool:
    """Whether classifying the same unchanged file again would give this artefact: a
    complete result (no skip: a timeout, a file that changed while read or a stop may
    come out differently next time) whose parents are none or its own content's (a copy
    of known content). Parents from inside the file (archive members) are reported by
    the parse that found them only, so such a result is not reused."""
    return a.skipped is None and a.sha256 is not None and a.parents in ((), (a.sha256,))


def _copier() -> Callable[[FileEvent, Artefact | None], FileEvent]:
    """`dataclasses.replace(event, artefact=a)` at half its cost (it was 4 us of each
    event): one call naming every field, written from the dataclass's own fields."""
    names = [f.name for f in fields(FileEvent) if f.init]
    args = ", ".join("artefact=a" if n == "artefact" else f"{n}=e.{n}" for n in names)
    namespace: dict[str, object] = {"FileEvent": FileEvent}
    exec(f"def with_artefact(e, a):\n    return FileEvent({args})\n", namespace)  # field names
    return namespace["with_artefact"]  # type: ignore[return-value]


_with_artefact = _copier()


def _carried_identity(event: FileEvent) -> tuple[object, ...] | None:
    """The identity `_identity` would read, from the sensor's lstat in the event; None
    when the event does not carry all of it."""
    if (
        event.inode is None
        or event.size is None
        or event.mtime_ns is None
        or event.ctime_ns is None
    ):
        return None
    return (event.current_path, event.inode, event.size, event.mtime_ns, event.ctime_ns)


def _identity(path: str) -> tuple[object, ...]:
    """The path with its inode, size, mtime and ctime: a changed file is a different job
    (also one rewritten in place with its size kept and its mtime put back)."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return (path,)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
