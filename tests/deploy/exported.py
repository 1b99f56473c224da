"""The metric names the agent really exports, read from `agent.metrics` itself.

A counter `x` is scraped as `x_total` (and `x_created`), a histogram as `x_bucket`,
`x_sum`, `x_count`, an info as `x_info`. Dashboards and alert rules may only use these
(plus Prometheus' own `up`).
"""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

from agent import metrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
METRIC_NAME = re.compile(r"\begress_agent_[a-zA-Z0-9_:]*")


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def agent_metrics_in(expr: str) -> set[str]:
    """Every `egress_agent_*` name an expression mentions."""
    return set(METRIC_NAME.findall(expr))
