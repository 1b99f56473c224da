"""The correlator: the pipeline sink that feeds correlation and writes incidents.

`submit()` is the pipeline's sink. It keeps only what correlation can use (file events
with an artefact, decision or process; flows) and queues it; one thread runs the pure
`CorrelationEngine` and hands each finding to the `IncidentLog`. `stop()` drains the
queue, then writes the clean-stop checkpoint. Lineage not seen since start is read
from the store's `lineage` table.

Two seams reach the running agent through `Runtime.extras`, looked up when used (the
sensors start after the sinks): the file sensor's `watch_reads(path)` — each tagged
artefact becomes a "path of interest" whose opens fanotify reports as `read` events,
which is what links a file to the process that uploads it — and the policy holder,
whose `decide_transfer` judges an artefact as carried by a flow (the catalogue and EAR
rules about uploads abroad).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, select

from agent import metrics
from agent.config import IncidentsSection
from agent.events import Artefact, Decision, Event, FileAction, FileEvent, Flow
from agent.incidents.ancestry import Ancestry
from agent.incidents.correlate import CorrelationEngine, is_tagged
from agent.incidents.log import IncidentLog
from agent.incidents.model import Finding
from agent.pipeline import BoundedQueue
from agent.store.models import Lineage

log = logging.getLogger(__name__)
GAUGE_REFRESH_SECONDS = 30.0
SUBMIT_PATIENCE = 0.05  # seconds a full correlation queue may hold up the pipeline


class Correlator:
    def __init__(
        self,
        engine: Engine,
        host_id: str,
        hostname: str,
        settings: IncidentsSection,
        extras: Mapping[str, Any] | None = None,
        queue_size: int = 100_000,
    ) -> None:
        self.engine = engine
        self._extras: Mapping[str, Any] = extras if extras is not None else {}
        self._watched: OrderedDict[str, None] = OrderedDict()
        self.log = IncidentLog(
            engine,
            host_id,
            hostname,
            dedup_window=settings.dedup_window,
            checkpoint_every=settings.checkpoint_every,
        )
        self.core = CorrelationEngine(
            window=settings.correlation_window,
            byte_tolerance=settings.byte_tolerance,
            parents_of=self._parents_from_store,
            judge_transfer=self._judge_transfer,
            ancestry=Ancestry(),
        )
        self.queue: BoundedQueue[Event] = BoundedQueue("incidents", queue_size)
        self._thread: threading.Thread | None = None
        self.findings = 0

    def start(self) -> None:
        self.log.start()
        self._thread = threading.Thread(target=self._run, name="incidents")
        self._thread.start()

    def submit(self, event: Event) -> None:
        if isinstance(event, FileEvent) and not (
            event.artefact or event.decisions or event.process
        ):
            return  # nothing correlation could use
        # never hold up the store writer, the sink before us: a full queue (the incident
        # log retrying through a store outage) drops and counts what correlation misses
        self.queue.put(event, timeout=SUBMIT_PATIENCE)

    def stop(self) -> None:
        if self._thread is None:
            return
        self.queue.put_stop()
        self._thread.join()
        self._thread = None
        try:
            self.log.checkpoint("clean stop")
        except Exception:
            log.exception("could not write the clean-stop checkpoint")

    def _run(self) -> None:
        done = False
        refreshed = time.monotonic()
        while not done:
            batch, done = self.queue.get_batch(256, 1.0)
            for event in batch:
                self._handle(event)
            if time.monotonic() - refreshed > GAUGE_REFRESH_SECONDS:
                # analysts ack and close from the CLI: keep the open-incidents gauge true
                refreshed = time.monotonic()
                try:
                    self.log.refresh_open_gauge()
                except Exception:
                    log.debug("open-incidents gauge refresh failed", exc_info=True)

    def _handle(self, event: Event) -> None:
        if isinstance(event, FileEvent):
            self._watch(event)
        try:
            findings = self.core.observe(event)
        except Exception:
            log.exception("correlation failed on %s", event.uid)
            metrics.STAGE_ERRORS.labels("incidents").inc()
            return
        for f in findings:
            self._record(f)

    def _record(self, finding: Finding) -> None:
        delay = 0.1
        for _attempt in range(10):
            try:
                result = self.log.record(finding)
            except Exception:
                log.exception("cannot record incident %s; retrying", finding.kind)
                metrics.STORE_ERRORS.labels("incident").inc()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.findings += 1
            if result is not None and result.created:
                log.warning(
                    "incident opened: %s [%s] %s", finding.kind, finding.rule_id, finding.title
                )
            return
        metrics.DROPPED.labels("incidents", "store_unavailable").inc()
        log.error("incident not recorded after retries: %s %s", finding.kind, finding.title)

    def _watch(self, e: FileEvent) -> None:
        """Ask the file sensor to report reads of a tagged artefact at its current path."""
        if e.action in (FileAction.READ, FileAction.DELETED) or not is_tagged(e):
            return
        watch = self._extras.get("watch_reads")
        path = e.current_path
        if watch is None or path in self._watched:
            return
        try:
            watch(path)
        except Exception:
            log.debug("watch_reads(%s) failed", path, exc_info=True)
            return
        self._watched[path] = None
        while len(self._watched) > 65_536:
            self._watched.popitem(last=False)

    def _judge_transfer(self, artefact: Artefact, flow: Flow, fe: FileEvent) -> list[Decision]:
        holder = self._extras.get("policy")
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
            with self.engine.connect() as conn:
                return list(
                    conn.execute(
                        select(Lineage.parent_sha256).where(Lineage.child_sha256 == sha).limit(16)
                    ).scalars()
                )
        except Exception:
            log.debug("lineage lookup failed for %s", sha, exc_info=True)
            return []
