"""The correlator: the pipeline sink that feeds correlation and writes incidents.

`submit()` is the pipeline's sink. It keeps only what correlation can use (file events
with an artefact, decision or process; flows) and queues it; one thread runs the pure
`CorrelationCore` and hands each finding to the `IncidentLog`. When the store is
unavailable (a fleet database during an outage) findings wait in memory, in order and
bounded, and are retried with back-off; nothing here ever blocks the agent's start.
`stop()` drains the queue, writes what is pending, then the clean-stop checkpoint.
Lineage not seen since start is read from the store's `lineage` table.

Two collaborators reach the running agent: the policy holder, whose `decide_transfer`
judges an artefact as carried by a flow (the catalogue and EAR rules about uploads
abroad), and the `ReadWatch` of agent/feedback.py — each tagged artefact becomes a
"path of interest" whose opens the file sensor reports as `read` events, which is what
links a file to the process that uploads it. The file sensor attaches to that watch
when it starts, after the sinks; until then asking is a no-op. Flows wait `FLOW_HOLD`
(same module) for the reads that preceded them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from agent import metrics
from agent.backoff import Backoff
from agent.config import IncidentsSection
from agent.events import Artefact, Decision, Event, FileAction, FileEvent, Flow
from agent.feedback import FLOW_HOLD, ReadWatch
from agent.incidents.ancestry import Ancestry
from agent.incidents.correlate import CorrelationCore, is_tagged
from agent.incidents.log import IncidentLog
from agent.incidents.model import IncidentFinding
from agent.incidents.tree import TreeFacts
from agent.pipeline import BoundedQueue
from agent.policy.facts import tree_facts
from agent.store.incidents import lineage_parents

if TYPE_CHECKING:
    from agent.policy.holder import PolicyHolder

log = logging.getLogger(__name__)
GAUGE_REFRESH_SECONDS = 30.0
SUBMIT_PATIENCE = 0.05  # seconds a full correlation queue may hold up the pipeline
MAX_PENDING = 10_000  # findings kept in memory while the store is unavailable
BATCH_LINGER = 0.1  # seconds a batch waits for more events (the store writer's default too)


class Correlator:
    def __init__(
        self,
        engine: Engine,
        host_id: str,
        hostname: str,
        settings: IncidentsSection,
        policy: PolicyHolder | None = None,
        read_watch: ReadWatch | None = None,
        queue_size: int = 100_000,
        anchor_dir: Path | None = None,
    ) -> None:
        """`policy` None: no transfer or tree rules (the events' own decisions only);
        `read_watch` None: no file sensor to ask for reads."""
        self.engine = engine
        self._policy = policy
        self._read_watch = read_watch if read_watch is not None else ReadWatch()
        self.log = IncidentLog(
            engine,
            host_id,
            hostname,
            dedup_window=settings.dedup_window,
            checkpoint_every=settings.checkpoint_every,
            anchor_dir=anchor_dir,
        )
        self.core = CorrelationCore(
            window=settings.correlation_window,
            byte_tolerance=settings.byte_tolerance,
            parents_of=self._parents_from_store,
            judge_transfer=self._judge_transfer,
            ancestry=Ancestry(),
            judge_tree=self._judge_tree,
        )
        self.queue: BoundedQueue[Event] = BoundedQueue("incidents", queue_size)
        self._thread: threading.Thread | None = None
        self._pending: deque[IncidentFinding] = deque()
        self._held: deque[tuple[float, Flow]] = deque()  # (due, flow), in arrival order
        self._started = False
        self._retry_at = 0.0
        self._backoff = Backoff(initial=0.5, maximum=30.0)
        self.findings = 0
        self._last_event = time.monotonic()  # when the newest event arrived, for tree copies

    def start(self) -> None:
        """Start the thread; never waits on the store (a fleet store may be unreachable)."""
        self._thread = threading.Thread(target=self._run, name="incidents")
        self._thread.start()

    def submit(self, event: Event) -> None:
        if not _useful(event):
            return  # nothing correlation could use
        # never hold up the store writer, the sink before us: a full queue drops and
        # counts what correlation misses
        self.queue.put(event, timeout=SUBMIT_PATIENCE)

    def submit_many(self, events: Sequence[Event]) -> None:
        """`submit` for a pipeline batch: one queue lock and at most one wake-up for the
        whole batch instead of one each; a full queue holds the batch up at most
        SUBMIT_PATIENCE in all, and what does not fit is dropped and counted."""
        useful = [e for e in events if _useful(e)]
        if useful:
            self.queue.put_many(useful, timeout=SUBMIT_PATIENCE)

    def stop(self) -> None:
        """Drain the queue, write what is pending and the clean-stop checkpoint."""
        if self._thread is None:
            return
        self.queue.put_stop()
        self._thread.join()
        self._thread = None
        self._flush(final=True)
        if self._pending:
            n = len(self._pending)
            metrics.DROPPED.labels("incidents", "store_unavailable_at_stop").inc(n)
            log.error("store unavailable at stop: %d incident finding(s) not recorded", n)
            self._pending.clear()
            return
        try:
            self.log.checkpoint("clean stop")
        except Exception:
            log.exception("could not write the clean-stop checkpoint")

    def _run(self) -> None:
        done = False
        refreshed = time.monotonic()
        while not done:
            # linger: flows that trickle in are correlated a batch at a time, one wake-up
            # per BATCH_LINGER instead of one per event
            # a second while something is time-bound (held flows, open tree copies, findings
            # the store refused); else asleep until the open-incidents gauge is due
            busy = self._pending or not self._started or len(self.core.trees)
            wait = 1.0 if busy else GAUGE_REFRESH_SECONDS
            if self._held:
                wait = min(wait, max(0.0, self._held[0][0] - time.monotonic()))
            batch, done = self.queue.get_batch(256, wait, linger=BATCH_LINGER)
            now = time.monotonic()
            for event in batch:
                if isinstance(event, Flow):
                    self._held.append((now + FLOW_HOLD, event))
                else:
                    self._handle(event)
            while self._held and (done or self._held[0][0] <= now):
                self._handle(self._held.popleft()[1])
            self._close_trees(final=done)
            self._flush()
            if self._started and time.monotonic() - refreshed > GAUGE_REFRESH_SECONDS:
                # analysts ack and close from the CLI: keep the open-incidents gauge true
                refreshed = time.monotonic()
                try:
                    self.log.refresh_open_gauge()
                except Exception:
                    log.debug("open-incidents gauge refresh failed", exc_info=True)

    def _handle(self, event: Event) -> None:
        self._last_event = time.monotonic()
        if isinstance(event, FileEvent):
            self._watch(event)
        try:
            findings = self.core.observe(event)
        except Exception:
            log.exception("correlation failed on %s", event.uid)
            metrics.STAGE_ERRORS.labels("incidents").inc()
            return
        for f in findings:
            if len(self._pending) >= MAX_PENDING:
                metrics.DROPPED.labels("incidents", "store_unavailable").inc()
                continue
            self._pending.append(f)

    def _flush(self, final: bool = False) -> None:
        """Record pending findings in order; on a store error keep them and back off."""
        if not self._pending and self._started:
            return
        if not final and time.monotonic() < self._retry_at:
            return
        try:
            if not self._started:
                self.log.start()  # the genesis record of a new chain
                self._started = True
            while self._pending:
                finding = self._pending[0]
                result = self.log.record(finding)
                self._pending.popleft()
                self.findings += 1
                if result is not None and result.created:
                    log.warning(
                        "incident opened: %s [%s] %s", finding.kind, finding.rule_id, finding.title
                    )
        except Exception as e:
            metrics.STORE_ERRORS.labels("incident").inc()
            wait = self._backoff.next()
            self._retry_at = time.monotonic() + wait
            log.warning(
                "incident log: store unavailable (%s); %d finding(s) kept, retrying in %.1fs",
                type(getattr(e, "orig", None) or e).__name__,
                len(self._pending),
                wait,
            )
            return
        self._backoff.reset()

    def _watch(self, e: FileEvent) -> None:
        """Ask the file sensor to report reads of a tagged artefact at its current path."""
        if e.action in (FileAction.READ, FileAction.DELETED) or not is_tagged(e):
            return
        self._read_watch.ask(e.current_path)

    def _close_trees(self, final: bool) -> None:
        """Whole-tree copies quiet on the wall clock (a copy's last file has no successor)."""
        if self.core.now is None:
            return
        # event time moved on by the quiet since the last event: replays stay in their time
        now = self.core.now + timedelta(seconds=time.monotonic() - self._last_event)
        try:
            findings = self.core.close_trees(now, final=final)
        except Exception:
            log.exception("closing whole-tree copies failed")
            metrics.STAGE_ERRORS.labels("incidents").inc()
            return
        self._pending.extend(findings[: max(0, MAX_PENDING - len(self._pending))])

    def _judge_tree(self, tree: TreeFacts) -> list[Decision]:
        holder = self._policy
        if holder is None:
            return []
        policy = holder.current
        try:
            facts = tree_facts(tree, policy.min_counts, policy.min_confidence)
            decisions = list(policy.decide(facts, when=tree.time))
        except Exception:
            log.exception("policy on a whole-tree copy failed")
            return []
        for d in decisions:
            metrics.DECISIONS.labels(d.pack, d.rule_id, str(d.severity), "").inc()
        return decisions

    def _judge_transfer(self, artefact: Artefact, flow: Flow, fe: FileEvent) -> list[Decision]:
        holder = self._policy
        if holder is None:
            return []
        try:
            decisions = list(holder.current.decide_transfer(artefact, flow, fe))
        except Exception:
            log.exception("policy on a transfer failed; the incident keeps the events' rules")
            return []
        for d in decisions:
            metrics.DECISIONS.labels(d.pack, d.rule_id, str(d.severity), flow.dest_class).inc()
        return decisions

    def _parents_from_store(self, sha: str) -> Sequence[str]:
        try:
            return lineage_parents(self.engine, sha, limit=16)
        except Exception:
            log.debug("lineage lookup failed for %s", sha, exc_info=True)
            return []


def _useful(event: Event) -> bool:
    """What correlation can use: flows, and file events with an artefact, a decision or
    a process."""
    return not isinstance(event, FileEvent) or bool(
        event.artefact or event.decisions or event.process
    )
