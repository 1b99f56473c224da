"""The policy in force in a running agent, and its reloads.

`PolicyHolder` loads the shipped packs (`policies/`, when `policies.builtin`) and the
site packs (`policies.paths`), honouring `policies.disabled` and site overrides. A
reload — on SIGHUP (a daemon reload hook) or when a pack file changes (a thread waiting
on inotify, joined on stop) — replaces the policy only if the new one validates and its
rule tests pass; otherwise the last good policy stays, the errors are logged and
`egress_agent_policy_last_reload_success` goes to 0. Each policy version loaded is
recorded in the store's `policy_versions` table.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from select import POLLIN
from select import poll as Poll
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from agent import metrics
from agent.categories import CategorySpec
from agent.config import PoliciesSection
from agent.policy.cache import load_configured
from agent.policy.issues import SHIPPED_DIR, Issue
from agent.policy.model import EMPTY_POLICY, Policy
from agent.sensors.files._inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)
from agent.wakepipe import close_pipe, wake_then_join

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger(__name__)

# what changes a pack: written, created, removed, renamed, touched; its directory replaced
WATCH_MASK = (
    IN_CLOSE_WRITE
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
SETTLE = 0.2  # seconds of quiet after a change before the packs are read


class PolicyHolder:
    """Holds the `Policy` in force; `categories` is the classifier's CategoryProvider."""

    def __init__(
        self,
        section: Callable[[], PoliciesSection],
        engine: Engine | None = None,
        shipped_dir: Path = SHIPPED_DIR,
        cache_dir: Path | None = None,
    ) -> None:
        self._section = section
        self._engine = engine
        self._shipped_dir = shipped_dir
        self._cache_dir = cache_dir  # where the compiled policy is kept between starts
        self._policy: Policy = EMPTY_POLICY
        self._lock = threading.Lock()
        self.errors: list[Issue] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: dict[str, tuple[int, int, int]] = {}
        self._wake_r = self._wake_w = -1  # stop() writes here to end the watcher's wait

    @property
    def current(self) -> Policy:
        return self._policy

    def categories(self) -> Sequence[CategorySpec]:
        return self._policy.categories

    def reload(self) -> bool:
        """Load the configured packs; swap them in only if they validate."""
        with self._lock:
            self._snapshot = self._take_snapshot()
            policy, issues = load_configured(
                self._section(), self._shipped_dir, cache_dir=self._cache_dir
            )
            if policy is None:
                self.errors = issues
                metrics.POLICY_RELOADS.labels("failure").inc()
                metrics.POLICY_OK.set(0)
                log.error(
                    "policy not loaded (%d problem(s)); keeping policy %s:\n  %s",
                    len(issues),
                    self._policy.version[:12],
                    "\n  ".join(map(str, issues[:50])),
                )
                return False
            self.errors = []
            changed = policy.version != self._policy.version
            self._policy = policy
            metrics.POLICY_RELOADS.labels("success").inc()
            metrics.POLICY_OK.set(1)
            metrics.POLICY_LOADED_AT.set(policy.loaded_at)
        if changed:
            log.info(
                "policy %s in force: %d pack(s), %d rule(s), %d categories",
                policy.version[:12],
                sum(p.enabled for p in policy.packs),
                len(policy.rules),
                len(policy.categories),
            )
            self._record(policy)
        return True

    def _record(self, policy: Policy) -> None:
        if self._engine is None:
            return
        from agent.store.policy_versions import record_policy_version

        packs = [
            {
                "id": p.id,
                "version": p.version,
                "regime": p.regime,
                "file": p.file,
                "sha256": p.sha256,
            }
            for p in policy.packs
            if p.enabled
        ]
        loaded_at = datetime.fromtimestamp(policy.loaded_at, UTC)
        try:
            record_policy_version(self._engine, policy.version, loaded_at, packs, len(policy.rules))
        except SQLAlchemyError as e:
            log.warning("cannot record policy version %s: %s", policy.version[:12], e)

    def status(self) -> dict[str, Any]:
        p = self._policy
        return {
            "policy": {
                "version": p.version,
                "packs": [x.id for x in p.packs if x.enabled],
                "rules": len(p.rules),
                "last_reload_ok": not self.errors,
                "errors": [str(i) for i in self.errors[:20]],
            }
        }

    # --- watching pack files -------------------------------------------------------
    def _watched(self) -> list[Path]:
        section = self._section()
        paths = [self._shipped_dir] if section.builtin else []
        return [*paths, *section.paths]

    def _take_snapshot(self) -> dict[str, tuple[int, int, int]]:
        snap: dict[str, tuple[int, int, int]] = {}
        for root in self._watched():
            try:
                entries = [root, *root.iterdir()] if root.is_dir() else [root]
            except OSError:
                entries = [root]
            for p in entries:
                try:
                    st = p.stat()
                except OSError:
                    snap[str(p)] = (-1, -1, -1)
                    continue
                snap[str(p)] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return snap

    def start_watching(self, interval: float) -> None:
        """Reload when a pack file changes: inotify on the pack directories (a quiet agent
        does not wake for them), or a poll every `interval` seconds where inotify cannot
        watch one of them (a path or its parent missing, no inotify)."""
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="policy-watch", daemon=False
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        ino: Inotify | None
        try:
            ino = Inotify()
        except OSError as e:
            log.info("policy files polled every %s s: no inotify (%s)", interval, e)
            ino = None
        poller = Poll()
        poller.register(self._wake_r, POLLIN)
        if ino is not None:
            poller.register(ino.fd, POLLIN)
        try:
            while not self._stop.is_set():
                complete = ino is not None and self._arm(ino)
                # compared once armed, so a change made before the watches existed (just
                # after the last reload, or while it ran) is not missed
                try:
                    if self._take_snapshot() != self._snapshot:
                        log.info("policy files changed; reloading")
                        self.reload()
                        continue  # arm again: a reload can take a while
                except Exception:  # the watcher must outlive any one bad reload
                    log.exception("policy watch failed")
                ready = poller.poll(None if complete else interval * 1000)
                if self._stop.is_set():
                    return
                if ready and ino is not None:
                    self._settle(ino, poller)
        finally:
            if ino is not None:
                ino.close()
            close_pipe(self._wake_r, self._wake_w)

    def _arm(self, ino: Inotify) -> bool:
        """Watch each pack directory and each path's parent (a replaced or removed
        directory or file shows there); False when one cannot be watched."""
        complete = True
        for path in self._watched():
            for d in ([path] if path.is_dir() else []) + [path.parent]:
                try:
                    ino.add_watch(str(d), WATCH_MASK)
                except OSError:
                    complete = False
        return complete

    def _settle(self, ino: Inotify, poller: Poll) -> None:
        """Read what came, then wait until the files have been quiet for SETTLE seconds
        (an editor's save or a `cp` of several packs is one reload, not one per file)."""
        deadline = time.monotonic() + 5.0
        while ino.read() and time.monotonic() < deadline and not self._stop.is_set():
            if not poller.poll(SETTLE * 1000):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            wake_then_join(self._thread, self._wake_w)
            self._thread = None


def attach_policy(rt: Runtime) -> PolicyHolder:
    """Create the runtime's holder, load the policy, and register its hooks.

    Attaches the holder to `rt` (`rt.policy()`; its `categories` is the classifier's
    CategoryProvider); SIGHUP reloads it through a reload hook; the file watcher stops
    through a stop hook; a status hook reports the version in force. A policy that does
    not validate at start leaves an empty policy in force (events are still recorded,
    nothing is decided) until a reload succeeds.
    """
    holder = PolicyHolder(lambda: rt.settings.policies, rt.engine, cache_dir=rt.settings.state_dir)
    holder.reload()
    rt.attach_policy(holder)
    rt.on_reload(holder.reload)
    rt.on_stop(holder.stop)
    rt.on_status(holder.status)
    holder.start_watching(rt.settings.policies.watch_interval)
    return holder
