"""The typed records that flow one way through the pipeline.

Sensors create `FileEvent` and `Flow` records; the classifier attaches an `Artefact`;
policy attaches `Decision`s; the store writes them. Records are frozen: a stage that
adds something returns a copy (`dataclasses.replace`), so no stage can change what an
earlier stage saw.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def _uid_source() -> tuple[str, Iterator[int]]:
    return os.urandom(12).hex(), itertools.count()


# 96 random bits per process (drawn again in a forked child, and after 2^32 ids) and a
# counter: as unique across hosts and restarts as a random id needs to be (two
# processes share a prefix with probability ~n^2 / 2^97), at an eighth of uuid4's cost
_uid_state = _uid_source()
os.register_at_fork(after_in_child=lambda: globals().update(_uid_state=_uid_source()))


def new_uid() -> str:
    """A globally unique id (32 hex digits); it is also the idempotency key in a fleet
    store, so it must never repeat — not across hosts, restarts or forked workers.
    One per flow and per file event: uuid4() (a getrandom call each) cost 4 us."""
    global _uid_state
    state = _uid_state  # prefix and counter read together: a reseed cannot split them
    n = next(state[1])
    if n > 0xFFFFFFFF:
        if _uid_state is state:
            _uid_state = _uid_source()
        return new_uid()
    return f"{state[0]}{n:08x}"


class FileAction(StrEnum):
    CREATED = "created"
    WRITTEN = "written"  # close after write: one per close, not one per write()
    MOVED = "moved"
    DELETED = "deleted"
    READ = "read"  # only for paths of interest (fanotify)
    SCANNED = "scanned"  # seen by `egress-agent scan` or an inventory pass


class Channel(StrEnum):
    LOCAL = "local"
    REMOVABLE = "removable"
    NETWORK_SHARE = "network_share"
    CLOUD_SYNC = "cloud_sync"


class Origin(StrEnum):
    """How an event was found: live from the kernel, or by a reconciling rescan."""

    WATCH = "watch"
    RESCAN = "rescan"
    SCAN = "scan"
    SYNTHETIC = "synthetic"


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.INFO: 0,
    Severity.LOW: 1,
    Severity.MEDIUM: 2,
    Severity.HIGH: 3,
    Severity.CRITICAL: 4,
}


class Action(StrEnum):
    """What a policy decision asks for: an incident (`alert`) or only the record."""

    ALERT = "alert"
    RECORD = "record"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class ByteSource(StrEnum):
    """Where a flow's byte counts come from, most exact first."""

    TCP_INFO = "tcp_info"  # the kernel's tcpi_bytes_acked / tcpi_bytes_received
    TCP_SEQ = "tcp_seq"  # sequence numbers seen on the wire
    CONNTRACK_L3 = "conntrack_l3"  # conntrack's counters, headers included
    PACKETS = "packets"  # payload lengths of the packets captured


class DestClass(StrEnum):
    """What a destination is to this site (network.internal, approved, country)."""

    LOOPBACK = "loopback"
    INTERNAL = "internal"
    APPROVED = "approved"
    DOMESTIC = "domestic"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


class CloseReason(StrEnum):
    """Why a flow was exported."""

    FIN = "fin"
    RST = "rst"
    IDLE = "idle"
    ACTIVE = "active"  # still open at network.active_timeout: exported in parts
    END_OF_CAPTURE = "end_of_capture"
    DESTROY = "destroy"  # the kernel's socket-destroy notification
    EVICTED = "evicted"  # the flow table was full (network.max_flows)


class MatchMethod(StrEnum):
    """How correlation tied an incident's evidence together (`evidence.correlation.method`).

    The first three relate a flow to the files it carried, closest first; the others
    name stories that are not file-to-flow matches.
    """

    SAME_PROCESS = "same_process"
    CHILD_PROCESS = "child_process"
    SIZE_AND_TIME = "size_and_time"
    DECISION = "decision"  # one event that policy alerted on
    REPOSITORY = "repository"  # a git push of a tagged repository
    TREE = "tree"  # a whole-tree copy


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Who did it. Every field may be unknown; unknown is None, never a guess."""

    pid: int | None = None
    exe: str | None = None
    cmdline: str | None = None
    uid: int | None = None
    user: str | None = None
    ppid: int | None = None
    cwd: str | None = None  # /proc/PID/cwd when seen: where a `git push` works


@dataclass(frozen=True, slots=True)
class Tag:
    """One thing the classifier knows about an artefact, with the evidence for it.

    `kind` is the artefact kind (`model_weights`, `dataset`, `source_code`, `archive`,
    `document`, `engineering`, `secret`); `evidence` is the sentence a person reads
    ("safetensors header, 1.1e8 parameters, bf16"); `details` holds the same facts as
    data for policy conditions (`parameters`, `format`, `language`, ...).
    """

    kind: str
    evidence: str
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class CategoryMatch:
    """A policy category whose keywords or patterns matched, and how often.

    Only the category, the counts and the confidence are kept: never the matched text.
    `count` is occurrences (overlapping keywords of one phrase count once), `distinct`
    the different terms among them (what `min_count` compares; 0 on matches recorded
    before it existed), `confidence` "low" | "medium" | "high" from the corroborating
    evidence near the terms (agent/classify/keywords.py).
    """

    category: str
    count: int
    pack: str = ""
    distinct: int = 0
    confidence: str = "low"
    basis: str = ""  # why that confidence, for people: "2 pieces of evidence near ..."


@dataclass(frozen=True, slots=True)
class Artefact:
    """What a file is: its content identity plus tags, matches and lineage."""

    sha256: str | None
    size: int
    content_type: str = "unknown"
    tags: tuple[Tag, ...] = ()
    matches: tuple[CategoryMatch, ...] = ()
    parents: tuple[str, ...] = ()  # sha256 of artefacts this one inherited tags from
    skipped: str | None = None  # why the content was not (fully) read, if it was not
    # with skipped="timeout" (classify.file_deadline): the tier reached when work stopped,
    # "content" or "archive member N"; tags and hash are what was found until then
    skipped_at: str | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        tags = self.tags
        if len(tags) <= 1:  # nearly every file: no generator, no dict (twice a stored row)
            return (tags[0].kind,) if tags else ()
        return tuple(dict.fromkeys(t.kind for t in tags))


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy verdict on one event: which rule, how bad, what to do."""

    rule_id: str
    pack: str
    severity: Severity
    action: Action
    policy_version: str
    reason: str = ""
    categories: tuple[str, ...] = ()
    # what an officer acts on: the regime, the law or announcement, the item code, and
    # whether the control was in force on the event's day (its state: in_force,
    # not_yet_in_force, suspended, not_enforced, repealed; "(unverified)" when no source
    # confirmed it); confidence is the highest of the categories' ("" when none)
    regime: str = ""
    legal_ref: str = ""
    item: str = ""
    in_force: bool = True
    control_state: str = "in_force"
    confidence: str = ""


@dataclass(frozen=True, slots=True)
class FileEvent:
    """A file movement under a watched root (or a scanned file)."""

    action: FileAction
    path: str  # os.fsdecode()d: non-UTF-8 bytes survive as surrogate escapes
    channel: Channel = Channel.LOCAL
    dest_path: str | None = None  # for moves: where it went; `path` is where it was
    size: int | None = None
    inode: int | None = None
    device: int | None = None
    mtime_ns: int | None = None
    # the inode's change time: a rewrite that keeps the size and puts the mtime back
    # (`touch -d`) still moves it, so an identity with it cannot be fooled that way
    ctime_ns: int | None = None
    process: ProcessInfo | None = None
    origin: Origin = Origin.WATCH
    sensor: str = "files"
    time: datetime = field(default_factory=utcnow)
    uid: str = field(default_factory=new_uid)
    artefact: Artefact | None = None
    decisions: tuple[Decision, ...] = ()

    @property
    def current_path(self) -> str:
        """Where the file is now (the new path after a move)."""
        return self.dest_path if self.dest_path is not None else self.path


@dataclass(frozen=True, slots=True)
class Flow:
    """One outbound transport connection (or UDP conversation), exported like IPFIX."""

    protocol: str  # a Protocol value
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    start: datetime
    end: datetime
    bytes_out: int = 0  # payload bytes this host sent
    bytes_in: int = 0
    byte_source: str = ByteSource.TCP_SEQ
    name: str | None = None  # best destination name
    name_source: str | None = None  # sni | http_host | dns
    sni: str | None = None
    http_host: str | None = None
    dest_class: str = DestClass.UNKNOWN
    country: str | None = None
    close_reason: str = CloseReason.FIN
    dest_org: str | None = None  # owner of dst_ip from network.asn_db
    service: str | None = None  # known service of the name, e.g. "Google Drive"
    service_category: str | None = None  # cloud_storage | code_hosting | webmail | ...
    community_id: str | None = None  # Community ID v1, to join with Zeek/Suricata
    process: ProcessInfo | None = None
    # the git repository a git process pushed or fetched (agent/classify/repository.py,
    # `Repository.doc()` plus direction and approved), None for any other flow
    repository: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    sensor: str = "network"
    uid: str = field(default_factory=new_uid)
    decisions: tuple[Decision, ...] = ()

    @property
    def time(self) -> datetime:
        return self.end


Event = FileEvent | Flow
