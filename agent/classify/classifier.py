"""The classifier's shell: from a path to an `Artefact`, safely, hashing each content once.

Order of work for one path: `lstat` (symlinks, FIFOs, devices and sockets are never
opened), open with O_NOFOLLOW|O_NONBLOCK and check it is still the same regular file,
then the file identity (device, inode, size, mtime_ns, ctime_ns) → hash cache; on a miss, stream
the SHA-256 (in a helper thread for big files, while the content is parsed). With the
hash: the result cache, the in-memory LRU and the store (lineage); only content never
seen before is parsed by the engine. Path-dependent facts — the git repository of source
code and keywords in the file name (agent/classify/path_facts.py) — are added on every
call and never cached with the content. Every skip is counted in
`egress_agent_classify_skipped_total{reason}`.

`classify.file_deadline` bounds the work on one file from the moment `classify_path`
starts: the parsers check a `Deadline` in every loop and on every read, so a hostile
file costs a worker at most that long and comes out `skipped="timeout"` with the tier
reached (`Artefact.skipped_at`) and whatever was found until then. Hashing is not cut:
its cost is bounded by the file's size, and without the hash there is no artefact (a
slow hash is the stage's `event_timeout`, "deferred"). A timed-out result is kept in
the in-memory LRU only, never in the persistent result cache: a calmer moment or a
restart classifies it again.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

from agent import metrics
from agent.categories import CategorySpec
from agent.classify.base import HEAD_BYTES, Deadline, Finding, Limits, Source
from agent.classify.hashing import (
    BIG_BUF_SIZE,
    FileChanged,
    HashCache,
    claimed_sha256,
    sha256_fd,
)
from agent.classify.keywords import KeywordMatcher
from agent.classify.lineage import LRU, Known
from agent.classify.path_facts import artefact, git_internal
from agent.classify.tiers import CLASSIFIER_VERSION, ContentTiers
from agent.config import ClassifySection
from agent.events import Artefact
from agent.fingerprint import BIG_FILE, Abandoned, HashAhead, ident_of
from agent.liveness import name_current_thread

log = logging.getLogger(__name__)

MAX_PARENTS = 1000


def limits_from(settings: ClassifySection) -> Limits:
    return Limits(
        max_text_bytes=settings.max_text_bytes,
        max_archive_depth=settings.max_archive_depth,
        max_archive_members=settings.max_archive_members,
        max_archive_expanded_bytes=settings.max_archive_expanded_bytes,
        max_compression_ratio=settings.max_compression_ratio,
    )


@functools.cache
def _labelled(metric: Any, label: str) -> Any:
    """`metric.labels(label)`, looked up once: the child is the same object every time,
    and its lookup (a lock and a tuple of strings) was 3 µs of each small file."""
    return metric.labels(label)


def skipped(reason: str, size: int = 0) -> Artefact:
    metrics.CLASSIFY_SKIPPED.labels(reason).inc()
    return Artefact(sha256=None, size=size, skipped=reason)


_OS_REASONS = {
    errno.ENOENT: "vanished",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.ELOOP: "symlink",
    errno.ENAMETOOLONG: "bad_path",
    errno.ENOTDIR: "vanished",
}


class Classifier:
    """Thread-safe: one instance serves the pipeline stage and `scan`'s workers."""

    def __init__(
        self,
        settings: ClassifySection | None = None,
        cache: HashCache | None = None,
        categories: Callable[[], Sequence[CategorySpec]] | None = None,
        store_lookup: Callable[[str], Known | None] | None = None,
        ahead: HashAhead | None = None,
    ) -> None:
        self.settings = settings or ClassifySection()
        self._ahead = ahead  # hashes `scan` started before this classifier existed
        self.limits = limits_from(self.settings)
        self.tiers = ContentTiers(self.limits, use_magika=self.settings.use_magika)
        self.cache = cache
        self.lru = LRU()
        self._categories = categories or (lambda: ())
        self._store_lookup = store_lookup
        self._matcher_src: object = None
        self._matcher = KeywordMatcher(())
        self._lock = threading.Lock()
        self._hash_pool = ThreadPoolExecutor(
            self.settings.workers, "classify-hash", initializer=name_current_thread
        )
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Abandon the big-file hashes in flight (the agent is stopping): their events go
        on with `skipped="stopped"` instead of holding SIGTERM for a 100 GB read. Parsers
        need no such signal: `classify.file_deadline` already bounds them."""
        self._stopping.set()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._hash_pool.shutdown(wait=True)
        if self.cache is not None:
            self.cache.flush()

    # --- keywords --------------------------------------------------------------------
    def matcher(self) -> KeywordMatcher:
        """The automaton for the categories in force, rebuilt only when they change."""
        try:
            cats = self._categories()
        except Exception:
            log.exception("category provider failed; keeping the previous categories")
            return self._matcher
        with self._lock:
            if cats is not self._matcher_src:
                self._matcher = KeywordMatcher(tuple(cats))
                self._matcher_src = cats
            return self._matcher

    # --- entry points ----------------------------------------------------------------
    def classify_path(self, path: str) -> Artefact:
        """Classify one path now. Never raises for anything a file can do."""
        try:
            st = os.lstat(path)
        except OSError as e:
            return skipped(_OS_REASONS.get(e.errno or 0, "os_error"))
        except ValueError:  # NUL in the path
            return skipped("bad_path")
        if stat.S_ISLNK(st.st_mode):
            return skipped("symlink")
        if stat.S_ISDIR(st.st_mode):
            return self._directory(path)
        if not stat.S_ISREG(st.st_mode):
            return skipped("special_file")
        internal = git_internal(path, st.st_size)
        if internal is not None:
            return internal
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            return skipped(_OS_REASONS.get(e.errno or 0, "os_error"), st.st_size)
        deadline = Deadline(self.settings.file_deadline, "hash")
        try:
            return self._classify_fd(path, fd, st, deadline)
        finally:
            os.close(fd)

    def cached(self, path: str) -> Artefact | None:
        """What is already known about `path` (for READ events): no hashing, no parsing."""
        if self.cache is None:
            return None
        try:
            st = os.stat(path, follow_symlinks=False)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        internal = git_internal(path, st.st_size)
        if internal is not None:
            return internal
        sha = self.cache.lookup(*ident_of(st))
        if sha is None:
            return None
        known = self._known(sha)
        if known is None:
            return Artefact(sha256=sha, size=st.st_size)
        return artefact(self.matcher(), path, sha, st.st_size, known, (), None)

    # --- internals -------------------------------------------------------------------
    def _classify_fd(
        self, path: str, fd: int, st: os.stat_result, deadline: Deadline | None = None
    ) -> Artefact:
        deadline = deadline or Deadline(self.settings.file_deadline, "hash")
        t0 = time.monotonic()
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return skipped("changed_while_read")
        ident = ident_of(fst)
        sha = self.cache.lookup(*ident) if self.cache is not None else None
        hashing: Callable[[], str] | None = None  # a hash in flight: wait for it with this
        head: bytes | None = None  # a small file's whole content, when it was read to hash
        early = self._ahead.claim(ident, needed=sha is None) if self._ahead is not None else None
        if early is not None:
            hashing = partial(claimed_sha256, early)
        elif sha is None and fst.st_size >= BIG_FILE:
            hashing = self._hash_pool.submit(
                sha256_fd, fd, fst.st_size, BIG_BUF_SIZE, self._stopping
            ).result
        elif sha is None and fst.st_size <= HEAD_BYTES:
            # a small file is read once: the bytes hashed are the head the parsers see
            try:
                head = os.pread(fd, fst.st_size + 1, 0)
            except OSError as e:
                return skipped(_OS_REASONS.get(e.errno or 0, "read_error"), fst.st_size)
            metrics.HASHED_BYTES.inc(len(head))
            if len(head) != fst.st_size:
                return skipped("changed_while_read", fst.st_size)
            sha = hashlib.sha256(head).hexdigest()
        elif sha is None:
            try:
                sha = sha256_fd(fd, fst.st_size)
            except FileChanged:
                return skipped("changed_while_read", fst.st_size)
            except OSError as e:
                return skipped(_OS_REASONS.get(e.errno or 0, "read_error"), fst.st_size)
        known = self._known(sha) if sha is not None else None
        finding: Finding | None = None
        if known is None:
            # beside a hash in flight only the cheap tiers run; magika waits for the hash
            finding = self._parse(path, fd, fst.st_size, deadline, hashing is None, head)
            if hashing is not None and self.tiers.is_unknown(finding):
                # magika may be needed once the hash is known: load it during the hash
                self._hash_pool.submit(self.tiers.prepare_identify)
        if hashing is not None:
            try:
                sha = hashing()
            except Abandoned:
                return skipped("stopped", fst.st_size)
            except FileChanged:
                return skipped("changed_while_read", fst.st_size)
            except OSError as e:
                return skipped(_OS_REASONS.get(e.errno or 0, "read_error"), fst.st_size)
            if (
                finding is not None
                and self.tiers.is_unknown(finding)
                and not self._known(sha)
                and not deadline.expired
            ):
                finding = self._identify(path, fd, fst.st_size, deadline) or finding
        assert sha is not None
        after = os.fstat(fd)
        unchanged = ident_of(after) == ident
        if not unchanged:
            metrics.CLASSIFY_SKIPPED.labels("changed_while_read").inc()
        if known is None and hashing is not None:
            known = self._known(sha)  # a big file's hash may match a known artefact after all
        if finding is not None and known is None:
            known = self._remember(sha, finding, ident[:2], cache=unchanged)
        elif known is None:  # hash cached but not the result (other categories)
            finding = self._parse(path, fd, fst.st_size, deadline)
            known = self._remember(sha, finding, ident[:2], cache=unchanged)
        parents: tuple[str, ...] = ()
        if known.origin != ident[:2]:
            parents = (sha,)  # a copy (or the store knew it): lineage from the same content
        if self.cache is not None and unchanged:
            self.cache.store(*ident, sha)
        reason = finding.skipped if finding is not None else known.skipped
        if not unchanged:
            reason = "changed_while_read"
        if finding is not None and finding.parents:
            parents = tuple(finding.parents[:MAX_PARENTS])
        art = artefact(self.matcher(), path, sha, fst.st_size, known, parents, reason)
        if reason == "timeout":
            art = replace(art, skipped_at=finding.cut_at if finding else known.cut_at)
        if reason == "timeout" and finding is not None:
            log.warning(
                "classify %r: cut short at %s after %.1f s (classify.file_deadline); "
                "kept: hash, %s",
                path,
                finding.cut_at,
                time.monotonic() - t0,
                ", ".join(art.kinds) or "no kinds",
            )
        for kind in art.kinds or ("unknown",):
            _labelled(metrics.CLASSIFIED, kind).inc()
        return art

    def _source(
        self, path: str, fd: int, size: int, deadline: Deadline, head: bytes | None = None
    ) -> Source:
        if head is None:
            head = os.pread(fd, HEAD_BYTES, 0)

        def opener() -> Any:
            f = os.fdopen(os.dup(fd), "rb")
            f.seek(0)
            return f

        deadline.where = "content"
        return Source(name=path, size=size, head=head, opener=opener, deadline=deadline)

    def _identify(self, path: str, fd: int, size: int, deadline: Deadline) -> Finding | None:
        try:
            return self.tiers.identify(self._source(path, fd, size, deadline), path)
        except OSError:
            return None

    def _parse(
        self,
        path: str,
        fd: int,
        size: int,
        deadline: Deadline,
        magika: bool = True,
        head: bytes | None = None,
    ) -> Finding:
        try:
            src = self._source(path, fd, size, deadline, head)
        except OSError as e:  # EIO on a failing disk, a vanished network share
            reason = _OS_REASONS.get(e.errno or 0, "read_error")
            metrics.CLASSIFY_SKIPPED.labels(reason).inc()
            return Finding("application/octet-stream", skipped=reason)
        finding = self.tiers.classify(src, path, magika=magika)
        if finding.skipped:
            metrics.CLASSIFY_SKIPPED.labels(finding.skipped).inc()
            log.info("classify %r: partial (%s)", path, finding.skipped)
        return finding

    def _remember(self, sha: str, finding: Finding, origin: tuple[int, int], cache: bool) -> Known:
        matcher = self.matcher()
        counts = matcher.counts([finding.text])
        by_code = tuple((matcher.categories[i].code, n) for i, n in sorted(counts.items()))
        known = Known(
            finding.content_type,
            tuple(finding.tags),
            (),
            by_code,
            origin,
            finding.skipped,
            finding.cut_at,
        )
        if cache:
            self.lru.put(sha, known)
            if self.cache is not None and finding.skipped != "timeout":
                self.cache.store_result(sha, CLASSIFIER_VERSION, matcher.key, known.to_doc())
        return known

    def _known(self, sha: str) -> Known | None:
        """A remembered result for this hash: LRU, result cache, then the store."""
        matcher = self.matcher()
        hit = self.lru.get(sha)
        if hit is not None:
            return hit
        if self.cache is not None:
            doc = self.cache.result(sha, CLASSIFIER_VERSION, matcher.key)
            if doc is not None:
                known = Known.from_doc(doc)
                self.lru.put(sha, known)
                return known
        if self._store_lookup is not None:
            return self._store_lookup(sha)
        return None

    def _directory(self, path: str) -> Artefact:
        """A TensorFlow SavedModel directory is one artefact; other directories are not."""
        pb = os.path.join(path, "saved_model.pb")
        if not os.path.isfile(pb):
            return Artefact(sha256=None, size=0, skipped="directory")  # not a problem: no count
        inner = self.classify_path(pb)
        return Artefact(
            sha256=None,
            size=inner.size,
            content_type="application/x-tf-savedmodel",
            tags=inner.tags,
            parents=(inner.sha256,) if inner.sha256 else (),
        )
