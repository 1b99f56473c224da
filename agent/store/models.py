"""SQLAlchemy 2 ORM classes over the store's tables (agent/store/tables.py).

The schema itself is in `tables.py` (Core tables, what the daemon uses); these classes
are mapped onto it for the CLI's reads, which get objects (`incidents list`, `events
list`, the chain verification). Migrations (`migrations/env.py`) compare against
`Base.metadata`, the tables' metadata.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase, Mapped

from agent.store import tables


class Base(DeclarativeBase):
    metadata = tables.metadata
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Host(Base):
    __table__ = tables.hosts

    id: Mapped[str]
    hostname: Mapped[str]
    agent_version: Mapped[str]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class Artefact(Base):
    """Content identity: one row per distinct SHA-256, with what the classifier found."""

    __table__ = tables.artefacts

    sha256: Mapped[str]
    size: Mapped[int]
    content_type: Mapped[str]
    kinds: Mapped[list[Any]]
    tags: Mapped[list[Any]]
    matches: Mapped[list[Any]]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class Lineage(Base):
    """parent → child links: a copy, rename or archive of a tagged artefact."""

    __table__ = tables.lineage

    parent_sha256: Mapped[str]
    child_sha256: Mapped[str]
    relation: Mapped[str]
    first_seen: Mapped[datetime]


class FileEventRow(Base):
    __table__ = tables.file_events

    id: Mapped[int]
    uid: Mapped[str]
    host_id: Mapped[str]
    time: Mapped[datetime]
    action: Mapped[str]
    path: Mapped[str]
    dest_path: Mapped[str | None]
    channel: Mapped[str]
    origin: Mapped[str]
    sensor: Mapped[str]
    size: Mapped[int | None]
    inode: Mapped[int | None]
    device: Mapped[int | None]
    mtime_ns: Mapped[int | None]
    sha256: Mapped[str | None]
    kinds: Mapped[list[Any] | None]
    categories: Mapped[list[Any] | None]
    pid: Mapped[int | None]
    exe: Mapped[str | None]
    cmdline: Mapped[str | None]
    uid_num: Mapped[int | None]
    user: Mapped[str | None]
    skipped: Mapped[str | None]
    skipped_at: Mapped[str | None]


class FlowRow(Base):
    __table__ = tables.flows

    id: Mapped[int]
    uid: Mapped[str]
    host_id: Mapped[str]
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    protocol: Mapped[str]
    src_ip: Mapped[str]
    src_port: Mapped[int]
    dst_ip: Mapped[str]
    dst_port: Mapped[int]
    bytes_out: Mapped[int]
    bytes_in: Mapped[int]
    byte_source: Mapped[str]
    name: Mapped[str | None]
    name_source: Mapped[str | None]
    sni: Mapped[str | None]
    http_host: Mapped[str | None]
    dest_class: Mapped[str]
    country: Mapped[str | None]
    close_reason: Mapped[str]
    dest_org: Mapped[str | None]
    service: Mapped[str | None]
    service_category: Mapped[str | None]
    community_id: Mapped[str | None]
    pid: Mapped[int | None]
    exe: Mapped[str | None]
    cmdline: Mapped[str | None]
    uid_num: Mapped[int | None]
    user: Mapped[str | None]


class DecisionRow(Base):
    __table__ = tables.decisions

    id: Mapped[int]
    uid: Mapped[str]
    host_id: Mapped[str]
    time: Mapped[datetime]
    subject_kind: Mapped[str]
    subject_uid: Mapped[str]
    pack: Mapped[str]
    rule_id: Mapped[str]
    severity: Mapped[str]
    action: Mapped[str]
    policy_version: Mapped[str]
    reason: Mapped[str]
    categories: Mapped[list[Any]]
    regime: Mapped[str]
    legal_ref: Mapped[str]
    item: Mapped[str]
    in_force: Mapped[bool]
    control_state: Mapped[str]
    confidence: Mapped[str]


class IncidentRow(Base):
    """One story with its evidence. `seq`/`prev_hash`/`chain_hash` form the hash chain."""

    __table__ = tables.incidents

    id: Mapped[int]
    uid: Mapped[str]
    host_id: Mapped[str]
    kind: Mapped[str]
    rule_id: Mapped[str]
    pack: Mapped[str]
    severity: Mapped[str]
    status: Mapped[str]
    title: Mapped[str]
    dedup_key: Mapped[str]
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    evidence: Mapped[dict[str, Any]]
    events_count: Mapped[int]
    bytes_out: Mapped[int]
    policy_version: Mapped[str]
    acted_by: Mapped[str | None]
    note: Mapped[str | None]


class ChainRecord(Base):
    """The append-only, hash-chained log of incident changes (tamper evidence)."""

    __table__ = tables.incident_chain

    seq: Mapped[int]
    host_id: Mapped[str]
    time: Mapped[datetime]
    record_type: Mapped[str]
    incident_uid: Mapped[str | None]
    payload: Mapped[str]
    prev_hash: Mapped[str]
    hash: Mapped[str]


class PolicyVersion(Base):
    __table__ = tables.policy_versions

    version: Mapped[str]
    loaded_at: Mapped[datetime]
    packs: Mapped[list[Any]]
    rules_count: Mapped[int]


class FileState(Base):
    """What the agent last knew of each path: the reference a reconciling rescan compares to."""

    __table__ = tables.file_state

    host_id: Mapped[str]
    path: Mapped[str]
    size: Mapped[int | None]
    inode: Mapped[int | None]
    mtime_ns: Mapped[int | None]
    sha256: Mapped[str | None]
    updated_at: Mapped[datetime]


class ForwardMark(Base):
    """How far each spool has been committed to the central store (migration 0005).

    The forwarder (agent/store/forwarder.py) moves this mark in the same transaction as
    the batch it stores, so after a lost acknowledgement the mark says which spooled
    events are already in: they are acknowledged, not sent again, and the event rows can
    be COPYed straight into their tables without a conflict check.
    """

    __table__ = tables.forward_marks

    spool_id: Mapped[str]
    host_id: Mapped[str]
    last_seq: Mapped[int]
    updated_at: Mapped[datetime]


class JobState(Base):
    """Where a scheduled job left off (e.g. the export cursor), so a restart resumes."""

    __table__ = tables.job_state

    name: Mapped[str]
    host_id: Mapped[str]
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
