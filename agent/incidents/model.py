"""The incident record: what correlation finds and what the incident log stores.

Correlation (`correlate.py`) turns judged events into `IncidentFinding`s; the incident log
(`log.py`) turns a finding into a new incident or an update of an open one. The
incident *document* — a plain JSON-able dict with the row's columns — is the one shape
shared by the store row, the hash chain payload, `incidents show` and every export, so
that verifying a row means comparing two documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.events import Decision, MatchMethod, Severity
from agent.store.rows import storable_text

KINDS = (
    "exfiltration",
    "removable_copy",
    "cloud_sync_copy",
    "policy_alert",
    "repository_push",
    "tree_copy",
)
STATUSES = ("open", "acknowledged", "closed")
DOC_FIELDS = (
    "uid",
    "host_id",
    "kind",
    "rule_id",
    "pack",
    "severity",
    "status",
    "title",
    "dedup_key",
    "opened_at",
    "updated_at",
    "evidence",
    "events_count",
    "bytes_out",
    "policy_version",
    "acted_by",
    "note",
)
EVIDENCE_LISTS = ("files", "flows", "lineage", "processes", "decisions")
EVIDENCE_EXTRAS = ("repository", "tree")  # plain mappings, kept as the finding gave them
EVIDENCE_CAP = 100  # items kept per evidence list; the rest are counted in `truncated`


@dataclass(frozen=True, slots=True)
class IncidentFinding:
    """One correlated story (or a part of one), ready to open or update an incident.

    `evidence` holds lists of plain dicts (`files`, `flows`, `lineage`, `processes`,
    `decisions`) plus `correlation` and `roots`; `supersedes` names the dedup keys of
    policy-alert incidents that this story absorbs (they are closed as merged).
    """

    kind: str
    rule_id: str
    pack: str
    severity: Severity
    policy_version: str
    title: str
    dedup_key: str
    time: datetime
    bytes_out: int = 0
    evidence: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    supersedes: tuple[str, ...] = ()

    @classmethod
    def named_after(
        cls,
        rule: Decision,
        kind: str,
        title: str,
        dedup_key: str,
        time: datetime,
        evidence: Mapping[str, Any],
        bytes_out: int = 0,
        supersedes: Iterable[str] = (),
    ) -> IncidentFinding:
        """A finding that carries `rule`'s name, pack, severity and policy version.

        The severity is policy's: correlation never grades a story itself.
        """
        return cls(
            kind=kind,
            rule_id=rule.rule_id,
            pack=rule.pack,
            severity=rule.severity,
            policy_version=rule.policy_version,
            title=storable_text(title) or "",
            dedup_key=dedup_key,
            time=time,
            bytes_out=bytes_out,
            evidence=evidence,
            supersedes=tuple(sorted(supersedes)),
        )


def iso(t: datetime) -> str:
    """UTC ISO-8601 with microseconds: the one time spelling in documents and payloads."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text: equal documents give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def severity_of(value: str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        return Severity.INFO


def new_document(finding: IncidentFinding, uid: str, host_id: str) -> dict[str, Any]:
    evidence: dict[str, Any] = {k: list(finding.evidence.get(k, ())) for k in EVIDENCE_LISTS}
    evidence["correlation"] = dict(finding.evidence.get("correlation", {}))
    evidence["roots"] = sorted(finding.evidence.get("roots", ()))
    for key in EVIDENCE_EXTRAS:  # what a repository or tree story is about
        if isinstance(finding.evidence.get(key), Mapping):
            evidence[key] = dict(finding.evidence[key])
    evidence["truncated"] = {}
    _cap(evidence)
    return {
        "uid": uid,
        "host_id": host_id,
        "kind": finding.kind,
        "rule_id": finding.rule_id,
        "pack": finding.pack,
        "severity": str(finding.severity),
        "status": "open",
        "title": finding.title,
        "dedup_key": finding.dedup_key,
        "opened_at": iso(finding.time),
        "updated_at": iso(finding.time),
        "evidence": evidence,
        "events_count": _count_events(evidence),
        "bytes_out": finding.bytes_out,
        "policy_version": finding.policy_version,
        "acted_by": None,
        "note": None,
    }


def _item_key(kind: str, item: Mapping[str, Any]) -> str:
    if kind in ("files", "flows"):
        return str(item.get("uid"))
    if kind == "lineage":
        return f"{item.get('parent')}>{item.get('child')}"
    if kind == "processes":
        return f"{item.get('pid')}:{item.get('exe')}"
    return f"{item.get('subject_uid')}:{item.get('rule_id')}"


def _count_events(evidence: Mapping[str, Any]) -> int:
    truncated = evidence.get("truncated", {})
    return sum(len(evidence[k]) + int(truncated.get(k, 0)) for k in ("files", "flows"))


def _cap(evidence: dict[str, Any]) -> None:
    for k in EVIDENCE_LISTS:
        extra = len(evidence[k]) - EVIDENCE_CAP
        if extra > 0:
            evidence[k] = evidence[k][:EVIDENCE_CAP]
            evidence["truncated"][k] = int(evidence["truncated"].get(k, 0)) + extra


# how closely a file was tied to a flow; a later, closer match (the uploader's own read
# arriving after its flow) refines the story's correlation
METHOD_RANK: dict[str, int] = {
    MatchMethod.SIZE_AND_TIME: 1,
    MatchMethod.CHILD_PROCESS: 2,
    MatchMethod.SAME_PROCESS: 3,
}


def _method_rank(correlation: Mapping[str, Any] | None) -> int:
    return METHOD_RANK.get(str((correlation or {}).get("method", "")), 0)


def merge(doc: Mapping[str, Any], finding: IncidentFinding) -> dict[str, Any] | None:
    """The document after adding a finding's new evidence; None when nothing is new.

    Re-delivered events add nothing, so replaying a story never touches the chain.
    Status, who acted and the note stay as an analyst left them.
    """
    evidence = json.loads(json.dumps(doc["evidence"]))
    evidence.setdefault("truncated", {})
    new_flow_bytes = 0
    added = 0
    for k in EVIDENCE_LISTS:
        have = {_item_key(k, it) for it in evidence.get(k, [])}
        evidence.setdefault(k, [])
        for item in finding.evidence.get(k, ()):
            key = _item_key(k, item)
            if key in have:
                continue
            have.add(key)
            evidence[k].append(dict(item))
            if k in ("files", "flows"):
                added += 1
            if k == "flows":
                new_flow_bytes += int(item.get("bytes_out") or 0)
    closer = finding.evidence.get("correlation")
    if _method_rank(closer) > _method_rank(evidence.get("correlation")):
        evidence["correlation"] = dict(closer or {})
        added += 1
    if added == 0:
        return None
    evidence["roots"] = sorted(
        set(evidence.get("roots", [])) | set(finding.evidence.get("roots", ()))
    )
    _cap(evidence)
    out = dict(doc)
    out["evidence"] = evidence
    out["events_count"] = _count_events(evidence)
    out["bytes_out"] = int(doc["bytes_out"]) + new_flow_bytes
    if finding.severity.rank > severity_of(doc["severity"]).rank:
        out["severity"] = str(finding.severity)
    out["updated_at"] = max(doc["updated_at"], iso(finding.time))
    return out


def row_values(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The incidents-table columns for a document."""
    vals = {k: doc[k] for k in DOC_FIELDS}
    vals["opened_at"] = parse_iso(doc["opened_at"])
    vals["updated_at"] = parse_iso(doc["updated_at"])
    return vals


def document_from_row(row: Any) -> dict[str, Any]:
    """The document a stored incident row says it is (for verify and exports)."""
    doc = {k: getattr(row, k) for k in DOC_FIELDS}
    doc["opened_at"] = iso(row.opened_at)
    doc["updated_at"] = iso(row.updated_at)
    return doc
