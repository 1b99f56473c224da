"""The flow table's byte accounting in Prometheus: outbound bytes by destination and by
service category, flows exported, flows evicted.

Outbound bytes are counted as they are learnt, not only at export: a long upload shows
in egress_agent_outbound_bytes_total while it runs (each kernel count adds what is new
since the last, remembered in `FlowState.counted_out`), and the records of one flow add
up to the same total as the counter. Only the live sensor counts (replay's flows are not
this host's traffic). Kept apart from the state machine so that what is counted, and
under which labels, reads in one place.
"""

from __future__ import annotations

from typing import Any

from agent import metrics
from agent.events import DestClass
from agent.sensors.network.flownames import FlowNaming, Verdict
from agent.sensors.network.flowstate import FlowState


class FlowMetrics:
    """The counters one live flow table adds to."""

    def __init__(self, naming: FlowNaming) -> None:
        self.naming = naming
        # metric children by label values, looked up once (labels() costs a lock and a
        # tuple per call, twice per flow otherwise)
        self._byte_counters: dict[tuple[str, str], Any] = {}
        self._service_counters: dict[str, Any] = {}
        self._flow_counters: dict[tuple[str, str, str], Any] = {}

    def outbound(self, st: FlowState, verdict: Verdict | None = None) -> None:
        """Add the flow's outbound bytes not counted yet; `verdict` is its (dest_class,
        country, service category) when the caller has it already."""
        total = st.totals()[0]
        if total <= st.counted_out:
            return
        if verdict is None:
            verdict = self.naming.verdict(st)
        dest_class, country, category = verdict
        labels = (dest_class, country or "unknown")
        counter = self._byte_counters.get(labels)
        if counter is None:
            counter = self._byte_counters[labels] = metrics.OUTBOUND_BYTES.labels(*labels)
        counter.inc(total - st.counted_out)
        if category is not None:
            by_service = self._service_counters.get(category)
            if by_service is None:
                by_service = metrics.SERVICE_BYTES.labels(category)
                self._service_counters[category] = by_service
            by_service.inc(total - st.counted_out)
        st.counted_out = total

    def flow(self, dest_class: DestClass, country: str | None, protocol: str) -> None:
        """One flow record exported."""
        labels = (dest_class, country or "unknown", protocol)
        counter = self._flow_counters.get(labels)
        if counter is None:
            counter = self._flow_counters[labels] = metrics.FLOWS.labels(*labels)
        counter.inc()

    def evicted(self, count: int) -> None:
        """Flows exported to make room in a full table."""
        metrics.FLOWS_EVICTED.inc(count)
