"""The policy in force in a running agent, and its reloads.

`PolicyHolder` loads the shipped packs (`policies/`, when `policies.builtin`) and the
site packs (`policies.paths`), honouring `policies.disabled` and site overrides. A
reload — on SIGHUP (a daemon reload hook) or when a pack file changes (a small polling
thread, joined on stop) — replaces the policy only if the new one validates and its
rule tests pass; otherwise the last good policy stays, the errors are logged and
`egress_agent_policy_last_reload_success` goes to 0. Each policy version loaded is
recorded in the store's `policy_versions` table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from agent import metrics
from agent.categories import CategorySpec
from agent.config import PoliciesSection
from agent.policy.build import load_policy
from agent.policy.loader import SHIPPED_DIR, Issue
from agent.policy.model import EMPTY_POLICY, Policy

log = logging.getLogger(__name__)


def load_configured(
    section: PoliciesSection, shipped_dir: Path = SHIPPED_DIR, extra_site: Sequence[Path] = ()
) -> tuple[Policy | None, list[Issue]]:
    """Load what the config names (rule tests included): (policy, []) or (None, issues)."""
    return load_policy(
        [shipped_dir] if section.builtin else [],
        [*section.paths, *extra_site],
        section.disabled,
        section.pack_parameters(),
    )


class PolicyHolder:
    """Holds the `Policy` in force; `categories` is the classifier's CategoryProvider."""

    def __init__(
        self,
        section: Callable[[], PoliciesSection],
        engine: Engine | None = None,
        shipped_dir: Path = SHIPPED_DIR,
    ) -> None:
        self._section = section
        self._engine = engine
        self._shipped_dir = shipped_dir
        self._policy: Policy = EMPTY_POLICY
        self._lock = threading.Lock()
        self.errors: list[Issue] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: dict[str, tuple[int, int, int]] = {}

    @property
    def current(self) -> Policy:
        return self._policy

    def categories(self) -> Sequence[CategorySpec]:
        return self._policy.categories

    def reload(self) -> bool:
        """Load the configured packs; swap them in only if they validate."""
        with self._lock:
            self._snapshot = self._take_snapshot()
            policy, issues = load_configured(self._section(), self._shipped_dir)
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
        from agent.store.models import PolicyVersion

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
        row = {
            "version": policy.version,
            "loaded_at": datetime.fromtimestamp(policy.loaded_at, UTC),
            "packs": packs,
            "rules_count": len(policy.rules),
        }
        table = PolicyVersion.__table__
        assert isinstance(table, Table)
        try:
            with self._engine.begin() as conn:
                found = conn.execute(
                    select(table.c.version).where(table.c.version == policy.version)
                ).first()
                if found is None:
                    conn.execute(insert(table).values(**row))
        except IntegrityError:
            pass  # another agent on the fleet store recorded the same version first
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
        """Poll the pack files every `interval` seconds and reload when one changes."""
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="policy-watch", daemon=False
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self._take_snapshot() != self._snapshot:
                    log.info("policy files changed; reloading")
                    self.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("policy watch failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def attach_policy(rt: Any) -> PolicyHolder:
    """Create the runtime's holder, load the policy, and register its hooks.

    Sets `rt.extras["policy"]` (the holder) and `rt.extras["categories"]` (the
    classifier's CategoryProvider); SIGHUP reloads through `reload_hooks`; the file
    watcher stops through `stop_hooks`; `status_hooks` report the version in force.
    A policy that does not validate at start leaves an empty policy in force (events are
    still recorded, nothing is decided) until a reload succeeds.
    """
    holder = PolicyHolder(lambda: rt.settings.policies, rt.engine)
    holder.reload()
    rt.extras["policy"] = holder
    rt.extras["categories"] = holder.categories
    rt.extras.setdefault("reload_hooks", []).append(holder.reload)
    rt.extras.setdefault("stop_hooks", []).append(holder.stop)
    rt.extras.setdefault("status_hooks", []).append(holder.status)
    holder.start_watching(rt.settings.policies.watch_interval)
    return holder
