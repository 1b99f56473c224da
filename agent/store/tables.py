"""The store's schema as SQLAlchemy Core tables: what the daemon writes and reads.

Schema changes only through Alembic migrations in `migrations/`; a test fails when these
tables and the migrations disagree. Every event row carries `host_id` (many agents can
share one PostgreSQL) and a globally unique `uid` — the idempotency key that makes a
retried batch insert no duplicate. On PostgreSQL the event tables are partitioned by day
(agent/store/partitions.py, migration 0005) and that key is `(uid, <event time>)`. No
file content is ever stored: only hashes, sizes, tags, category match counts and rule ids.

The daemon's store path (writer, host registration, incidents, job state) uses these
tables directly; the ORM classes of `agent.store.models` are mapped onto them for the
CLI's reads. Importing the ORM (sqlalchemy.orm and the declarative classes) cost each
start about 0.07 s of CPU that the daemon never used.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
    true,
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for volume.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


hosts = Table(
    "hosts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("agent_version", String(32), nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)


# Content identity: one row per distinct SHA-256, with what the classifier found.
artefacts = Table(
    "artefacts",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("kinds", JSON, nullable=False),
    Column("tags", JSON, nullable=False),  # [{kind, evidence, details}]
    Column("matches", JSON, nullable=False),  # [{category, pack, count}]
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)


# parent → child links: a copy, rename or archive of a tagged artefact.
lineage = Table(
    "lineage",
    metadata,
    Column("parent_sha256", String(64), primary_key=True),
    Column("child_sha256", String(64), primary_key=True),
    Column("relation", String(32), primary_key=True),  # copy|member|rename
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Index("ix_lineage_child", "child_sha256"),
)


file_events = Table(
    "file_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("uid", String(64), unique=True, nullable=False),
    Column("host_id", String(64), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("action", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("dest_path", Text),
    Column("channel", String(16), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("sensor", String(32), nullable=False),
    Column("size", BigInteger),
    Column("inode", BigInteger),
    Column("device", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("sha256", String(64)),
    Column("kinds", JSON),
    Column("categories", JSON),
    Column("pid", Integer),
    Column("exe", Text),
    Column("cmdline", Text),
    Column("uid_num", Integer),
    Column("user", String(255)),
    # why classification was cut short, and where (migration 0004): Artefact.skipped(_at)
    Column("skipped", String(32)),
    Column("skipped_at", String(64)),
    Index("ix_file_events_time", "time"),
    Index("ix_file_events_host_time", "host_id", "time"),
    # only hashed events: the look-up by content; no index on path (migration 0008:
    # each file event paid for both, and no query of the agent or dashboards uses them)
    Index(
        "ix_file_events_sha256_set",
        "sha256",
        postgresql_where=text("sha256 IS NOT NULL"),
        sqlite_where=text("sha256 IS NOT NULL"),
    ),
)


flows = Table(
    "flows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("uid", String(64), unique=True, nullable=False),
    Column("host_id", String(64), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("protocol", String(8), nullable=False),
    Column("src_ip", String(45), nullable=False),
    Column("src_port", Integer, nullable=False),
    Column("dst_ip", String(45), nullable=False),
    Column("dst_port", Integer, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("bytes_in", BigInteger, nullable=False),
    Column("byte_source", String(16), nullable=False),
    Column("name", String(255)),
    Column("name_source", String(16)),
    Column("sni", String(255)),
    Column("http_host", String(255)),
    Column("dest_class", String(16), nullable=False),
    Column("country", String(8)),
    Column("close_reason", String(16), nullable=False),
    # issue 16 (migration 0003): owner of the address, known service, Community ID v1
    Column("dest_org", String(128)),
    Column("service", String(64)),
    Column("service_category", String(16)),
    Column("community_id", String(64)),
    Column("pid", Integer),
    Column("exe", Text),
    Column("cmdline", Text),
    Column("uid_num", Integer),
    Column("user", String(255)),
    Index("ix_flows_end", "end_time"),
    Index("ix_flows_host_end", "host_id", "end_time"),
    Index("ix_flows_dst", "dst_ip"),
)


decisions = Table(
    "decisions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("uid", String(64), unique=True, nullable=False),
    Column("host_id", String(64), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("subject_kind", String(16), nullable=False),  # file_event | flow
    Column("subject_uid", String(64), nullable=False),
    Column("pack", String(64), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("action", String(16), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("categories", JSON, nullable=False),
    # what an officer acts on (migration 0002): regime, law, item code, whether the
    # control was in force on the event's day and in which state, and the confidence
    Column("regime", String(64), server_default="", nullable=False),
    Column("legal_ref", Text, server_default="", nullable=False),
    Column("item", Text, server_default="", nullable=False),
    Column("in_force", Boolean, server_default=true(), nullable=False),
    Column("control_state", String(48), server_default="in_force", nullable=False),
    Column("confidence", String(8), server_default="", nullable=False),
    Index("ix_decisions_time", "time"),
    Index("ix_decisions_host_time", "host_id", "time"),
    Index("ix_decisions_subject", "subject_uid"),
    Index("ix_decisions_rule", "rule_id"),
)


# One story with its evidence. `seq`/`prev_hash`/`chain_hash` form the hash chain.
incidents = Table(
    "incidents",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("uid", String(64), unique=True, nullable=False),
    Column("host_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # exfiltration | removable_copy | ...
    Column("rule_id", String(128), nullable=False),
    Column("pack", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # open | acknowledged | closed
    Column("title", Text, nullable=False),
    Column("dedup_key", String(128), index=True, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("events_count", Integer, default=1, nullable=False),
    Column("bytes_out", BigInteger, default=0, nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("acted_by", String(255)),
    Column("note", Text),
    Index("ix_incidents_opened", "opened_at"),
    Index("ix_incidents_updated", "updated_at"),  # incidents list --since (0006)
    Index("ix_incidents_host_status", "host_id", "status"),
    Index("ix_incidents_rule", "rule_id"),
)


# The append-only, hash-chained log of incident changes (tamper evidence).
incident_chain = Table(
    "incident_chain",
    metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("host_id", String(64), primary_key=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("record_type", String(16), nullable=False),  # genesis|incident|update|checkpoint
    Column("incident_uid", String(64)),
    Column("payload", Text, nullable=False),  # canonical JSON the hash covers
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)


policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", String(64), primary_key=True),  # content hash
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    Column("packs", JSON, nullable=False),  # [{id, version, regime, file}]
    Column("rules_count", Integer, nullable=False),
)


# What the agent last knew of each path: the reference a reconciling rescan compares to.
file_state = Table(
    "file_state",
    metadata,
    Column("host_id", String(64), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger),
    Column("inode", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("sha256", String(64)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# How far each spool has been committed to the central store (migration 0005).
#
# The forwarder (agent/store/forwarder.py) moves this mark in the same transaction as
# the batch it stores, so after a lost acknowledgement the mark says which spooled
# events are already in: they are acknowledged, not sent again, and the event rows can
# be COPYed straight into their tables without a conflict check.
#
forward_marks = Table(
    "forward_marks",
    metadata,
    Column("spool_id", String(64), primary_key=True),
    Column("host_id", String(64), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# Where a scheduled job left off (e.g. the export cursor), so a restart resumes.
job_state = Table(
    "job_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("host_id", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
