"""The metric classes' cached `labels()`: the same children prometheus_client makes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from agent import metrics
from agent.events import FileAction


def test_cached_labels_give_prometheus_clients_own_children() -> None:
    registry = CollectorRegistry()
    c = metrics.Counter("t_cached_total", "test", ["action", "channel"], registry=registry)
    first = c.labels(FileAction.WRITTEN, "local")
    assert c.labels("written", "local") is first  # a str enum and its value: one child
    assert c.labels(action="written", channel="local") is first  # keywords: uncached path
    first.inc(2)
    c.labels("written", "local").inc()
    assert (
        't_cached_total{action="written",channel="local"} 3.0' in generate_latest(registry).decode()
    )


def test_a_removed_child_is_not_served_from_the_cache() -> None:
    registry = CollectorRegistry()
    g = metrics.Gauge("t_cached_gauge", "test", ["queue"], registry=registry)
    old = g.labels("q")
    old.set(5)
    g.remove("q")
    fresh = g.labels("q")
    assert fresh is not old
    assert 't_cached_gauge{queue="q"} 0.0' in generate_latest(registry).decode()
