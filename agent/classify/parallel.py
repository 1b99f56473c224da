"""Classify many paths on every core: forked worker processes, chunks of paths, results in order.

The work on a small file — parsing, the keyword automaton, rendering its line — holds the
GIL, so `scan`'s threads used one core however many there were. Here `workers`
processes each run their own `Classifier.classify_path`, the very code the daemon runs:
the per-file deadline (`classify.file_deadline`, checked by the parsers themselves) and
every skip reason are the same. Paths go out in chunks (one task per chunk, not per
file) and what comes back is already rendered by `render` in the worker, so the parent
only walks and writes.

Workers are forked, not spawned: the parent has already imported the classifier and
loaded the policy, and a fork hands both over in microseconds where a fresh interpreter
would import them again on a core the scan needs. The caller forks only while it runs
no other thread (`safe_to_fork`). Each worker opens its own connection to the hash cache
in buffered mode and writes a chunk's entries in one transaction when the chunk is done,
so that a second scan finds what the first one hashed; the workers take turns at it
through a lock of their own, which wakes the next one at once where SQLite would poll.

A worker that dies (a native parser crashing the interpreter, the OOM killer) breaks
the pool; its chunks are classified again one path per task in a fresh pool, and the
one path that kills a worker again is reported `skipped="worker_died"`.

Lineage stays what one process in walk order gives (`WalkOrderLineage`): a worker reads
the cache as it was before the scan (`HashCache(buffered=True)`), so of two files with
the same content only its own earlier files can make one a copy; the parent, which sees
every file in walk order, makes every later copy point to the content (`parents`), and
after the scan records the first one as the content's origin in the cache.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.categories import CategorySpec
from agent.config import ClassifySection
from agent.events import Artefact

R = TypeVar("R")
Ident = tuple[int, int]  # (device, inode) of the file classified, when it was opened
Render = Callable[[str, Artefact, Ident | None], R]

# paths per task: a task is a round trip and a hash-cache commit (256 against 64: 7 µs
# less a small file), and still 30-40 ms of work, so output flows
CHUNK = 256
MIN_CHUNK = 16  # the last chunks: a big file among them costs little imbalance
WRITE_WAIT = 10.0  # s: the longest a worker waits for its turn to write the hash cache
LOOKAHEAD = 1024  # paths walked ahead of the chunks, to know when the end is near
WINDOW = 4  # chunks in flight per worker: enough to hide the round trips, bounded memory

_worker: dict[str, Any] = {}  # the worker process's classifier, cache and render


def safe_to_fork() -> bool:
    """Only this thread runs: no lock can be held across the fork by another one."""
    return threading.active_count() == 1


def _init(
    settings: ClassifySection,
    cache_path: Path | None,
    categories: Sequence[CategorySpec],
    render: Render[Any],
    writing: Any = None,
) -> None:
    from agent.classify.classifier import Classifier
    from agent.classify.hashing import HashCache
    from agent.classify.keywords import KeywordMatcher

    class Remembering(Classifier):
        """Keeps the identity of the file it opened: the parent needs it for lineage,
        and a second `lstat` costs 5-14 µs a file on a virtual machine."""

        ident: Ident | None = None
        fixed: KeywordMatcher | None = None

        def _classify_fd(self, path: str, fd: int, st: Any, deadline: Any = None) -> Artefact:
            self.ident = (st.st_dev, st.st_ino)
            return super()._classify_fd(path, fd, st, deadline)

        def matcher(self) -> KeywordMatcher:
            # a scan's categories never change: the automaton is not looked up again
            # under the lock three times a file
            m = self.fixed
            if m is None:
                m = self.fixed = super().matcher()
            return m

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    cache = HashCache(cache_path, buffered=True) if cache_path is not None else None
    cats = tuple(categories)
    _worker["cache"] = cache
    _worker["classifier"] = Remembering(settings, cache=cache, categories=lambda: cats)
    _worker["render"] = render
    _worker["writing"] = writing


def _run(paths: list[str]) -> list[Any]:
    clf = _worker["classifier"]
    render = _worker["render"]
    out = []
    for p in paths:
        clf.ident = None
        a = clf.classify_path(p)
        out.append(render(p, a, clf.ident))
    cache = _worker["cache"]
    if cache is not None:
        # the parent hears of a chunk only once its entries are written; one worker
        # writes at a time, and the next one is woken the moment it may: SQLite's own
        # wait for a busy file sleeps 1, 2, 5, 10, 15 ms... (76 ms of a 10,000-file
        # scan). A worker that died holding the lock holds it for good: wait a while.
        writing = _worker["writing"]
        held = writing is not None and writing.acquire(timeout=WRITE_WAIT)
        try:
            cache.flush()
        finally:
            if held:
                writing.release()
    return out


class ProcessClassifier(Generic[R]):
    """`map(paths)` → (path, render(path, artefact)) in input order, on `workers` processes."""

    def __init__(
        self,
        settings: ClassifySection,
        cache_path: Path | None,
        categories: Sequence[CategorySpec],
        render: Render[R],
        workers: int,
        chunk: int = CHUNK,
    ) -> None:
        self._initargs = (settings, cache_path, tuple(categories), render)
        self._render = render
        self.workers = workers
        self.chunk = chunk
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # fork: every worker is started by the first submit (before the executor's own
        # thread), so a no-op task forks them now, while the caller runs no other thread
        pool = self._fork_pool()
        pool.submit(int)
        return pool

    def _fork_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("fork")
        # the workers' turns at writing the hash cache: a semaphore they inherit, new
        # with each pool (one whose worker died may have died holding it)
        writing = ctx.Lock()
        return ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_init, initargs=(*self._initargs, writing)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, paths: Iterator[str]) -> Iterator[tuple[str, R]]:
        for chunk in self.chunks(paths):
            yield from chunk

    def chunks(self, paths: Iterator[str]) -> Iterator[list[tuple[str, R]]]:
        """`map`, a chunk's results at a time (what became ready together)."""
        window: deque[tuple[list[str], Future[list[R]]]] = deque()
        limit = self.workers * WINDOW
        for chunk in self._cut(paths):
            window.append((chunk, self._pool.submit(_run, chunk)))
            while len(window) >= limit:
                yield from self._collect(window)
        while window:
            yield from self._collect(window)

    def _cut(self, paths: Iterator[str]) -> Iterator[list[str]]:
        """Chunks of `self.chunk` paths while the walk goes on (LOOKAHEAD paths ahead);
        then, once the number left is known, ever smaller ones (a quarter of a worker's
        share of what is left, at least MIN_CHUNK), so that no worker is still busy with
        a big last chunk while the others are done."""
        ahead: deque[str] = deque()
        most = self.chunk
        least = min(MIN_CHUNK, most)
        for path in paths:
            ahead.append(path)
            if len(ahead) >= LOOKAHEAD + most:
                yield [ahead.popleft() for _ in range(most)]
        while ahead:
            n = max(least, min(most, len(ahead) // (self.workers * 4)))
            yield [ahead.popleft() for _ in range(min(n, len(ahead)))]

    def _collect(
        self, window: deque[tuple[list[str], Future[list[R]]]]
    ) -> Iterator[list[tuple[str, R]]]:
        chunk, fut = window.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool:
            # every chunk in flight is lost with the pool: redo them path by path
            pending = [chunk, *(c for c, _f in window)]
            window.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            for lost in pending:
                for one in self._one_by_one(lost):
                    yield [one]
            return
        yield list(zip(chunk, results, strict=True))

    def _one_by_one(self, paths: list[str]) -> Iterator[tuple[str, R]]:
        for path in paths:
            try:
                result = self._pool.submit(_run, [path]).result()[0]
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                died = Artefact(sha256=None, size=_size(path), skipped="worker_died")
                result = self._render(path, died, None)
            yield path, result


class WalkOrderLineage:
    """`parents` as a single process classifying in walk order would give them.

    Such a process calls a file a copy (`parents=(sha,)`) when the content is known
    with another origin: from before the scan (the worker saw that too, and said so),
    or from an earlier file of this scan, which only the parent knows across workers.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[int, int]] = {}  # sha -> identity of its first file
        self._origin_here: set[str] = set()  # contents first met in this scan (no origin)
        self._copied: set[str] = set()

    def parents(
        self, sha: str | None, ident: tuple[int, int] | None, got: tuple[str, ...]
    ) -> tuple[str, ...]:
        if sha is None or ident is None or got not in ((), (sha,)):
            return got  # no content, or the parents are an archive's members
        first = self._first.get(sha)
        if first is None:
            self._first[sha] = ident
            if not got:
                self._origin_here.add(sha)
            return got
        if first == ident:
            return ()  # the same file again (named twice)
        self._copied.add(sha)
        return (sha,)

    def origins(self) -> list[tuple[str, tuple[int, int]]]:
        """(sha, identity of its first file) for contents met here first and copied: the
        origin to record, whichever worker stored its result last."""
        return [(sha, self._first[sha]) for sha in sorted(self._copied & self._origin_here)]


def record_origins(cache_path: Path, origins: list[tuple[str, tuple[int, int]]]) -> None:
    """Set the origin of these contents' cached results (after the workers are done)."""
    if not origins:
        return
    import sqlite3

    db = sqlite3.connect(str(cache_path), timeout=30)
    try:
        with db:
            db.executemany(
                "UPDATE results SET result = json_set(result, '$.origin', json_array(?, ?)) "
                "WHERE sha256 = ?",
                [(dev, ino, sha) for sha, (dev, ino) in origins],
            )
    except sqlite3.Error:
        pass  # only a cache: a later scan may then name the other copy first
    finally:
        db.close()


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except (OSError, ValueError):
        return 0
