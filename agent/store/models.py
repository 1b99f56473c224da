"""SQLAlchemy 2 models: the store's schema.

Schema changes only through Alembic migrations in `migrations/`; a test fails when the
models and the migrations disagree. Every event row carries `host_id` (many agents can
share one PostgreSQL) and a globally unique `uid` — the idempotency key that makes a
retried batch insert no duplicate. On PostgreSQL the event tables are partitioned by day
(agent/store/partitions.py, migration 0005) and that key is `(uid, <event time>)`. No
file content is ever stored: only hashes, sizes, tags, category match counts and rule ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for volume.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    agent_version: Mapped[str] = mapped_column(String(32))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Artefact(Base):
    """Content identity: one row per distinct SHA-256, with what the classifier found."""

    __tablename__ = "artefacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(64))
    kinds: Mapped[list[Any]] = mapped_column(JSON)
    tags: Mapped[list[Any]] = mapped_column(JSON)  # [{kind, evidence, details}]
    matches: Mapped[list[Any]] = mapped_column(JSON)  # [{category, pack, count}]
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lineage(Base):
    """parent → child links: a copy, rename or archive of a tagged artefact."""

    __tablename__ = "lineage"
    __table_args__ = (Index("ix_lineage_child", "child_sha256"),)

    parent_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    child_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    relation: Mapped[str] = mapped_column(String(32), primary_key=True)  # copy|member|rename
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FileEventRow(Base):
    __tablename__ = "file_events"
    __table_args__ = (
        Index("ix_file_events_time", "time"),
        Index("ix_file_events_host_time", "host_id", "time"),
        Index("ix_file_events_sha256", "sha256"),
        Index("ix_file_events_path", "path"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    dest_path: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))
    sensor: Mapped[str] = mapped_column(String(32))
    size: Mapped[int | None] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    device: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    kinds: Mapped[list[Any] | None] = mapped_column(JSON)
    categories: Mapped[list[Any] | None] = mapped_column(JSON)
    pid: Mapped[int | None] = mapped_column(Integer)
    exe: Mapped[str | None] = mapped_column(Text)
    cmdline: Mapped[str | None] = mapped_column(Text)
    uid_num: Mapped[int | None] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(255))
    # why classification was cut short, and where (migration 0004): Artefact.skipped(_at)
    skipped: Mapped[str | None] = mapped_column(String(32))
    skipped_at: Mapped[str | None] = mapped_column(String(64))


class FlowRow(Base):
    __tablename__ = "flows"
    __table_args__ = (
        Index("ix_flows_end", "end_time"),
        Index("ix_flows_host_end", "host_id", "end_time"),
        Index("ix_flows_dst", "dst_ip"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    protocol: Mapped[str] = mapped_column(String(8))
    src_ip: Mapped[str] = mapped_column(String(45))
    src_port: Mapped[int] = mapped_column(Integer)
    dst_ip: Mapped[str] = mapped_column(String(45))
    dst_port: Mapped[int] = mapped_column(Integer)
    bytes_out: Mapped[int] = mapped_column(BigInteger)
    bytes_in: Mapped[int] = mapped_column(BigInteger)
    byte_source: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(255))
    name_source: Mapped[str | None] = mapped_column(String(16))
    sni: Mapped[str | None] = mapped_column(String(255))
    http_host: Mapped[str | None] = mapped_column(String(255))
    dest_class: Mapped[str] = mapped_column(String(16))
    country: Mapped[str | None] = mapped_column(String(8))
    close_reason: Mapped[str] = mapped_column(String(16))
    # issue 16 (migration 0003): owner of the address, known service, Community ID v1
    dest_org: Mapped[str | None] = mapped_column(String(128))
    service: Mapped[str | None] = mapped_column(String(64))
    service_category: Mapped[str | None] = mapped_column(String(16))
    community_id: Mapped[str | None] = mapped_column(String(64))
    pid: Mapped[int | None] = mapped_column(Integer)
    exe: Mapped[str | None] = mapped_column(Text)
    cmdline: Mapped[str | None] = mapped_column(Text)
    uid_num: Mapped[int | None] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(255))


class DecisionRow(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_time", "time"),
        Index("ix_decisions_host_time", "host_id", "time"),
        Index("ix_decisions_subject", "subject_uid"),
        Index("ix_decisions_rule", "rule_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    subject_kind: Mapped[str] = mapped_column(String(16))  # file_event | flow
    subject_uid: Mapped[str] = mapped_column(String(64))
    pack: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(128))
    severity: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    policy_version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    categories: Mapped[list[Any]] = mapped_column(JSON)
    # what an officer acts on (migration 0002): regime, law, item code, whether the
    # control was in force on the event's day and in which state, and the confidence
    regime: Mapped[str] = mapped_column(String(64), server_default="")
    legal_ref: Mapped[str] = mapped_column(Text, server_default="")
    item: Mapped[str] = mapped_column(Text, server_default="")
    in_force: Mapped[bool] = mapped_column(Boolean, server_default=true())
    control_state: Mapped[str] = mapped_column(String(48), server_default="in_force")
    confidence: Mapped[str] = mapped_column(String(8), server_default="")


class IncidentRow(Base):
    """One story with its evidence. `seq`/`prev_hash`/`chain_hash` form the hash chain."""

    __tablename__ = "incidents"
    __table_args__ = (
        Index("ix_incidents_opened", "opened_at"),
        Index("ix_incidents_updated", "updated_at"),  # incidents list --since (0006)
        Index("ix_incidents_host_status", "host_id", "status"),
        Index("ix_incidents_rule", "rule_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # exfiltration | removable_copy | ...
    rule_id: Mapped[str] = mapped_column(String(128))
    pack: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # open | acknowledged | closed
    title: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(String(128), index=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    events_count: Mapped[int] = mapped_column(Integer, default=1)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    policy_version: Mapped[str] = mapped_column(String(64))
    acted_by: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)


class ChainRecord(Base):
    """The append-only, hash-chained log of incident changes (tamper evidence)."""

    __tablename__ = "incident_chain"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    record_type: Mapped[str] = mapped_column(String(16))  # genesis|incident|update|checkpoint
    incident_uid: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON the hash covers
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)  # content hash
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    packs: Mapped[list[Any]] = mapped_column(JSON)  # [{id, version, regime, file}]
    rules_count: Mapped[int] = mapped_column(Integer)


class FileState(Base):
    """What the agent last knew of each path: the reference a reconciling rescan compares to."""

    __tablename__ = "file_state"

    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ForwardMark(Base):
    """How far each spool has been committed to the central store (migration 0005).

    The forwarder (agent/store/forwarder.py) moves this mark in the same transaction as
    the batch it stores, so after a lost acknowledgement the mark says which spooled
    events are already in: they are acknowledged, not sent again, and the event rows can
    be COPYed straight into their tables without a conflict check.
    """

    __tablename__ = "forward_marks"

    spool_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(64))
    last_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobState(Base):
    """Where a scheduled job left off (e.g. the export cursor), so a restart resumes."""

    __tablename__ = "job_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
