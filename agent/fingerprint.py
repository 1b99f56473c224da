"""Streaming SHA-256 of open files, and hashes started before anyone asked for them.

This module sits outside `agent.classify` and imports nothing but the standard library,
so that `egress-agent scan` can start hashing the big files it was given within a few
tens of milliseconds of starting, while pydantic, the classifier and the policy packs
are still being imported (about 0.2 s: on a 2 GB file, 15 % on top of OpenSSL's own
time). `agent.classify.hashing` builds the cache and the metrics on top of it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from agent.errors import AgentError

BUF_SIZE = 1 << 20
BIG_BUF_SIZE = 8 << 20
BIG_FILE = 16 << 20  # from here on a hash runs on its own thread, beside the parsers
# device, inode, size, mtime_ns, ctime_ns: the ctime because an in-place rewrite of the
# same size can put the mtime back (utimensat), but not the ctime, which the kernel sets
Ident = tuple[int, int, int, int, int]
_local = threading.local()


class FileChanged(AgentError):
    """The file changed (grew, shrank or was rewritten) while it was being hashed."""

    def __init__(self, read: int, expected: int) -> None:
        super().__init__(f"read {read} bytes, expected {expected}")
        self.read = read


class Abandoned(AgentError):
    """A hash stopped because its result was no longer wanted."""


def ident_of(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _buffer(size: int) -> memoryview:
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(size)
    if buf is None:
        buf = bufs[size] = memoryview(bytearray(size))
    return buf


def sha256_fd(
    fd: int,
    expected_size: int | None = None,
    buf_size: int = BUF_SIZE,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """SHA-256 of the file behind `fd` from offset 0 and the bytes read, with one reused
    buffer per thread (hashlib releases the GIL for updates this size, so threads hash
    in parallel at close to disk speed).

    `buf_size` is larger for big files hashed beside other work: each chunk must win the
    GIL back after it is hashed, and fewer, longer chunks lose less time waiting for it.
    Raises FileChanged when the bytes read differ from `expected_size`, and Abandoned
    soon after `stop` is set.
    """
    h = hashlib.sha256()
    buf = _buffer(buf_size)
    offset = 0
    while True:
        if stop is not None and stop.is_set():
            raise Abandoned
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            break
        h.update(buf[:n])
        offset += n
    if expected_size is not None and offset != expected_size:
        raise FileChanged(offset, expected_size)
    return h.hexdigest(), offset


def _hash_and_close(fd: int, size: int, stop: threading.Event) -> tuple[str, int]:
    """Hash, then close the descriptor before the result is visible: a done-callback
    closed it only after `result()` had already returned to the claimer (a descriptor
    still open, for a moment, after the hash was handed over)."""
    try:
        return sha256_fd(fd, size, BIG_BUF_SIZE, stop)
    finally:
        os.close(fd)


class HashAhead:
    """Hashes of the big regular files among `paths`, started at once on their own threads.

    Whoever later knows whether a hash is needed (the classifier, after asking the hash
    cache) calls `claim`: the running hash is handed over, or stopped when the cache
    already knows the file. A cache hit so costs a fraction of a second of reading on
    an otherwise idle core, never wall time. Files are matched by identity (device,
    inode, size, mtime, ctime), so a file replaced in between is simply hashed again.
    """

    def __init__(
        self, paths: Iterable[str], min_size: int, threads: int = 2, most: int = 8
    ) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Ident, tuple[Future[tuple[str, int]], threading.Event]] = {}
        pool = ThreadPoolExecutor(threads, "hash-ahead")
        try:
            for path in paths:
                if len(self._jobs) >= most:
                    break
                self._start(pool, path, min_size)
        finally:
            pool.shutdown(wait=False)

    def _start(self, pool: ThreadPoolExecutor, path: str, min_size: int) -> None:
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size < min_size:
                return
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return  # the classifier will meet the same problem and report it
        try:
            ident = ident_of(os.fstat(fd))
        except OSError:
            os.close(fd)
            return
        stop = threading.Event()
        future = pool.submit(_hash_and_close, fd, ident[2], stop)
        self._jobs[ident] = (future, stop)

    def claim(self, ident: Ident, needed: bool) -> Future[tuple[str, int]] | None:
        """The hash of the file with `ident` if one was started and is `needed`; a hash
        that is not needed is stopped."""
        with self._lock:
            job = self._jobs.pop(ident, None)
        if job is None:
            return None
        if not needed:
            job[1].set()
            return None
        return job[0]

    def close(self) -> None:
        """Stop every hash nobody claimed."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
        for _future, stop in jobs.values():
            stop.set()
