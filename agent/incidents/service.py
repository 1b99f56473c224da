"""The correlator: the pipeline sink that feeds correlation and writes incidents.

`submit()` is the pipeline's sink. It keeps only what correlation can use (file events
with an artefact, decision or process; flows) and queues it; one thread runs the pure
`CorrelationEngine` and hands each finding to the `IncidentLog`. `stop()` drains the
queue, then writes the clean-stop checkpoint. Lineage not seen since start is read
from the store's `lineage` table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy import Engine, select

from agent import metrics
from agent.config import IncidentsSection
from agent.events import Event, FileEvent
from agent.incidents.ancestry import Ancestry
from agent.incidents.correlate import CorrelationEngine
from agent.incidents.log import IncidentLog
from agent.incidents.model import Finding
from agent.pipeline import BoundedQueue
from agent.store.models import Lineage

log = logging.getLogger(__name__)


class Correlator:
    def __init__(
        self,
        engine: Engine,
        host_id: str,
        hostname: str,
        settings: IncidentsSection,
        queue_size: int = 100_000,
    ) -> None:
        self.engine = engine
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
        self.queue.put(event, timeout=None)

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
        while not done:
            batch, done = self.queue.get_batch(256, 1.0)
            for event in batch:
                self._handle(event)

    def _handle(self, event: Event) -> None:
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
