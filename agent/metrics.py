"""Every Prometheus metric the agent exports, in one place.

Names follow Prometheus conventions: `egress_agent_` prefix, base units, `_total` for
counters. Labels only carry bounded values (stage, sensor, channel, destination class,
ISO country code, rule id from the loaded packs) and never a path, hash or address.
"""

from __future__ import annotations

import platform
from typing import Any

import prometheus_client
from prometheus_client import Info

from agent import __version__


class _CachedLabels:
    """`labels(*values)` from a plain dict once a child exists.

    prometheus_client validates and str()s every value and takes the metric's lock on
    each `labels()` call; the pipeline calls it per event (a classified file, a decision,
    a hash-cache hit), which cost more than the `inc()` itself. Children are never
    removed once made unless `remove`/`clear` is called, and those empty this cache too.
    Keyword labels and first calls go through prometheus_client unchanged.
    """

    _children: dict[tuple[Any, ...], Any]

    def labels(self, *values: Any, **kw: Any) -> Any:
        if not kw:
            try:
                return self._children[values]
            except (KeyError, AttributeError, TypeError):
                pass
        child = super().labels(*values, **kw)  # type: ignore[misc]
        if not kw:
            try:
                self._children[values] = child
            except AttributeError:
                self._children = {values: child}
            except TypeError:  # an unhashable value: served uncached, still correct
                pass
        return child

    def remove(self, *values: Any) -> None:
        self._children = {}
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._children = {}
        super().clear()  # type: ignore[misc]


class Counter(_CachedLabels, prometheus_client.Counter):
    pass


class Gauge(_CachedLabels, prometheus_client.Gauge):
    pass


class Histogram(_CachedLabels, prometheus_client.Histogram):
    pass


# --- agent and pipeline health ---------------------------------------------------
BUILD_INFO = Info("egress_agent_build", "Version of the running agent.")
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

STAGE_IN = Counter("egress_agent_stage_events_in_total", "Events taken in by a stage.", ["stage"])
STAGE_OUT = Counter(
    "egress_agent_stage_events_out_total", "Events passed on by a stage.", ["stage"]
)
STAGE_ERRORS = Counter(
    "egress_agent_stage_errors_total",
    "Events a stage failed on (the event is passed on without that stage's work).",
    ["stage"],
)
QUEUE_DEPTH = Gauge("egress_agent_queue_depth", "Events waiting in a queue.", ["queue"])
QUEUE_CAPACITY = Gauge("egress_agent_queue_capacity", "Size bound of a queue.", ["queue"])
DROPPED = Counter(
    "egress_agent_events_dropped_total",
    "Events that could not be kept, by where and why. Never silent.",
    ["queue", "reason"],
)

SENSOR_UP = Gauge(
    "egress_agent_sensor_up",
    "1 while the sensor's threads run and its events reach the store (fresh heartbeats), else 0.",
    ["sensor"],
)
THREAD_RESTARTS = Counter(
    "egress_agent_thread_restarts_total",
    "Times a supervised loop failed with an exception and was restarted after a back-off.",
    ["thread"],
)
SENSOR_RESTARTS = Counter(
    "egress_agent_sensor_restarts_total",
    "Times the daemon restarted a sensor whose thread had stopped.",
    ["sensor"],
)
PIPELINE_HEALTHY = Gauge(
    "egress_agent_pipeline_healthy",
    "1 when every stage and the store writer is running and keeping up; the systemd"
    " watchdog is fed only then.",
)
SENSOR_EVENTS = Counter(
    "egress_agent_sensor_events_total", "Events emitted by a sensor.", ["sensor"]
)

# --- store -----------------------------------------------------------------------
STORE_WRITE_SECONDS = Histogram(
    "egress_agent_store_write_seconds",
    "Time to commit one batch to the store.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STORE_ROWS = Counter("egress_agent_store_rows_written_total", "Rows committed.", ["table"])
STORE_ERRORS = Counter(
    "egress_agent_store_write_errors_total", "Failed commit attempts (retried).", ["reason"]
)
STORE_LAST_WRITE = Gauge(
    "egress_agent_store_last_write_timestamp_seconds", "Unix time of the last successful commit."
)
STORE_SIZE = Gauge("egress_agent_store_size_bytes", "Size of the local store on disk.")
STORE_REOPENED = Counter(
    "egress_agent_store_reopened_total",
    "SQLite store found replaced, removed or failing its integrity check, and reopened.",
    ["reason"],
)

# --- fleet store: local spool and forwarder ----------------------------------------
SPOOL_EVENTS = Gauge(
    "egress_agent_spool_events", "Events in the local spool waiting for the central store."
)
SPOOL_BYTES = Gauge("egress_agent_spool_bytes", "Serialised bytes held in the local spool.")
SPOOL_CAPACITY = Gauge(
    "egress_agent_spool_capacity_bytes", "Bound of the local spool (database.spool_max_bytes)."
)
FLEET_CONNECTED = Gauge(
    "egress_agent_fleet_connected",
    "1 if the last attempt to reach the central store succeeded, else 0.",
)
FLEET_FORWARDED = Counter(
    "egress_agent_fleet_forwarded_events_total",
    "Events committed to the central store and removed from the spool.",
)
FLEET_ERRORS = Counter(
    "egress_agent_fleet_forward_errors_total",
    "Failed attempts to reach or write the central store (retried with back-off).",
    ["reason"],
)
FLEET_FORWARD_SECONDS = Histogram(
    "egress_agent_fleet_forward_seconds",
    "Time to commit one spooled batch to the central store.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FLEET_LAST_FORWARD = Gauge(
    "egress_agent_fleet_last_forward_timestamp_seconds",
    "Unix time of the last batch committed to the central store.",
)

# --- files ---------------------------------------------------------------------
FILE_EVENTS = Counter(
    "egress_agent_file_events_total", "File events by type and channel.", ["type", "channel"]
)
FILE_LOST = Counter(
    "egress_agent_file_events_lost_total",
    "Conditions in which the kernel lost file events (each triggers a rescan).",
    ["reason"],
)
FILE_RESCANS = Counter("egress_agent_file_rescans_total", "Reconciling rescans run.", ["reason"])
FILE_RESCAN_FOUND = Counter(
    "egress_agent_file_rescan_events_total", "Events emitted by reconciling rescans.", ["type"]
)
FILE_WATCHES = Gauge("egress_agent_file_watches", "inotify watches in use.")

# --- classifier ----------------------------------------------------------------
CLASSIFIED = Counter(
    "egress_agent_artefacts_classified_total", "Artefacts classified, by kind.", ["kind"]
)
CLASSIFY_SKIPPED = Counter(
    "egress_agent_classify_skipped_total",
    "Files not (fully) read, by reason (limit, permission, special file, malformed...).",
    ["reason"],
)
HASHED_BYTES = Counter("egress_agent_hashed_bytes_total", "Bytes hashed with SHA-256.")
HASH_CACHE = Counter("egress_agent_hash_cache_total", "Hash cache lookups by result.", ["result"])

# --- network -------------------------------------------------------------------
OUTBOUND_BYTES = Counter(
    "egress_agent_outbound_bytes_total",
    "Outbound payload bytes by destination class and country.",
    ["dest_class", "country"],
)
FLOWS = Counter(
    "egress_agent_flows_total", "Outbound flows exported.", ["dest_class", "country", "protocol"]
)
FLOWS_EVICTED = Counter(
    "egress_agent_flows_evicted_total",
    "Flows exported early (close_reason=evicted) because the flow table was full "
    "(network.max_flows): the oldest idle ones make room for new ones.",
)
SERVICE_BYTES = Counter(
    "egress_agent_service_bytes_total",
    "Outbound payload bytes to known services, by service category (agent/data/services.yaml).",
    ["category"],  # the fixed CATEGORIES of services.py: never a host or service name
)
COUNTRY_DATA_TIME = Gauge(
    "egress_agent_country_data_timestamp_seconds",
    "When the country table in use was built (0 if unknown); alert on time() minus this.",
    ["source"],  # builtin | mmdb | csv
)
CAPTURE_PACKETS = Counter(
    "egress_agent_capture_packets_total", "Packets that reached Python.", ["interface"]
)
CAPTURE_DROPS = Counter(
    "egress_agent_capture_drops_total",
    "Packets the kernel dropped before the agent read them (PACKET_STATISTICS).",
    ["interface"],
)
NETLINK_LOST = Counter(
    "egress_agent_netlink_lost_total", "Lost sock_diag notifications (ENOBUFS), repaired by a dump."
)

# --- policy --------------------------------------------------------------------
DECISIONS = Counter(
    "egress_agent_decisions_total",
    "Policy decisions by pack, rule and severity.",
    ["pack", "rule", "severity", "dest_class"],
)
POLICY_RELOADS = Counter("egress_agent_policy_reloads_total", "Policy reloads.", ["result"])
POLICY_OK = Gauge(
    "egress_agent_policy_last_reload_success", "1 if the last policy (re)load validated, else 0."
)
POLICY_LOADED_AT = Gauge(
    "egress_agent_policy_loaded_timestamp_seconds", "Unix time the policy in force was loaded."
)

# --- incidents -----------------------------------------------------------------
INCIDENTS_OPENED = Counter(
    "egress_agent_incidents_opened_total", "Incidents opened.", ["rule", "severity"]
)
INCIDENTS_OPEN = Gauge("egress_agent_incidents_open", "Incidents not closed.", ["severity"])
CHAIN_CHECKPOINT = Gauge(
    "egress_agent_chain_checkpoint_timestamp_seconds",
    "Unix time of the last hash-chain checkpoint.",
)
# the chain head, kept by Prometheus where a store edit cannot reach it:
# `incidents verify --expect-seq N --expect-head H` reports a cut-off tail against it
CHAIN_HEAD_SEQ = Gauge(
    "egress_agent_incident_chain_head_seq", "Seq of the last record of this host's incident chain."
)
CHAIN_HEAD_HASH = Gauge(
    "egress_agent_incident_chain_head_hash_prefix",
    "First 12 hex digits of the incident chain head's hash, as an integer (exact in a float).",
)
# NaN until the daemon has read its chain: a restart or a store outage is not a head of 0
CHAIN_HEAD_SEQ.set(float("nan"))
CHAIN_HEAD_HASH.set(float("nan"))

# --- scheduler -----------------------------------------------------------------
JOB_RUNS = Counter("egress_agent_job_runs_total", "Scheduled job runs.", ["job", "result"])
JOB_SECONDS = Histogram(
    "egress_agent_job_duration_seconds",
    "Scheduled job duration.",
    ["job"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)
JOB_LAST_SUCCESS = Gauge(
    "egress_agent_job_last_success_timestamp_seconds", "Unix time of a job's last success.", ["job"]
)
JOB_LAST_FAILURE = Gauge(
    "egress_agent_job_last_failure_timestamp_seconds", "Unix time of a job's last failure.", ["job"]
)
