"""Findings: the incident findings correlation tells, with their evidence (pure, no I/O).

The second half of correlation (correlate.py orchestrates, matching.py decides which
files a flow carried). Each function turns what correlation gathered into one
`IncidentFinding`: the title an analyst reads, the evidence documents, the dedup key
that makes repeats update one incident, and the decision the incident is named after
(`choose_rule`: alerting first, then the most severe). Severity is policy's, never ours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta

from agent.events import Action, Decision, FileEvent, Flow, MatchMethod
from agent.incidents.evidence import (
    decision_doc,
    describe,
    file_doc,
    flow_doc,
    human,
    processes,
    size_of,
)
from agent.incidents.matching import Match
from agent.incidents.model import IncidentFinding
from agent.store.rows import storable_text


def is_alerting(d: Decision) -> bool:
    """An alert opens an incident whatever its severity: the pack chose alert over record."""
    return d.action == Action.ALERT


def dedup_key(kind: str, rule_id: str, root: str, dest: str) -> str:
    return hashlib.sha256(f"{kind}\x1f{rule_id}\x1f{root}\x1f{dest}".encode()).hexdigest()


def choose_rule(decisions: Sequence[tuple[str, Decision]]) -> Decision | None:
    """The decision an incident is named after: alerting first, then the most severe."""
    if not decisions:
        return None
    return max(
        (d for _uid, d in decisions),
        key=lambda d: (is_alerting(d), d.severity.rank),
    )


def destination(f: Flow) -> str:
    return f.sni or f.name or f.dst_ip


def exfiltration_finding(
    flow: Flow,
    match: Match,
    files: Sequence[FileEvent],
    rule: Decision,
    decisions: Sequence[tuple[str, Decision]],
    lineage: Sequence[tuple[str, str]],
    roots: Sequence[str],
    supersedes: set[str],
    window: timedelta,
    tolerance: float,
) -> IncidentFinding:
    """The upload story: the files `flow` carried, their lineage and what policy said."""
    dest = destination(flow)
    touched = match.touches[-1].event
    proc = flow.process or touched.process
    who = (proc.exe or "").rsplit("/", 1)[-1] if proc and proc.exe else "unknown process"
    where = f"{dest} ({flow.country or '??'}, {flow.dest_class})"
    title = (
        f"{describe(touched)} ({human(match.file_bytes)}) uploaded to {where} by {who}: "
        f"{human(flow.bytes_out)} sent"
    )
    touched_uids = {t.event.uid for t in match.touches}
    evidence = {
        "files": [file_doc(e, "touched" if e.uid in touched_uids else "lineage") for e in files],
        "flows": [flow_doc(flow)],
        "lineage": [{"parent": p, "child": c} for p, c in lineage],
        "processes": processes([flow.process, *(e.process for e in files)]),
        "decisions": [decision_doc(uid, d) for uid, d in decisions],
        "correlation": {
            "method": str(match.method),
            "file_bytes": match.file_bytes,
            "flow_bytes": flow.bytes_out,
            "window_seconds": int(window.total_seconds()),
            "tolerance_percent": round(tolerance * 100),
        },
        "roots": list(roots),
    }
    return IncidentFinding(
        kind="exfiltration",
        rule_id=rule.rule_id,
        pack=rule.pack,
        severity=rule.severity,
        policy_version=rule.policy_version,
        title=storable_text(title) or "",
        dedup_key=dedup_key("exfiltration", rule.rule_id, roots[0], dest),
        time=flow.end,
        bytes_out=flow.bytes_out,
        evidence=evidence,
        supersedes=tuple(sorted(supersedes)),
    )


def file_finding(
    e: FileEvent,
    kind: str,
    rule: Decision,
    what: str,
    roots: Sequence[str],
    lineage: Sequence[tuple[str, str]],
    lineage_events: Sequence[FileEvent],
) -> IncidentFinding:
    """One file event policy alerted on (a copy to removable media or cloud sync, or any)."""
    files = [file_doc(e, "touched")] + [file_doc(ev, "lineage") for ev in lineage_events]
    title = f"{describe(e)} ({human(size_of(e))}) {what}: {rule.rule_id}"
    return IncidentFinding(
        kind=kind,
        rule_id=rule.rule_id,
        pack=rule.pack,
        severity=rule.severity,
        policy_version=rule.policy_version,
        title=storable_text(title) or "",
        dedup_key=dedup_key(kind, rule.rule_id, roots[0], str(e.channel)),
        time=e.time,
        evidence={
            "files": files,
            "flows": [],
            "lineage": [{"parent": p, "child": c} for p, c in lineage],
            "processes": processes([e.process]),
            "decisions": [decision_doc(e.uid, d) for d in e.decisions],
            "correlation": {"method": str(MatchMethod.DECISION), "channel": str(e.channel)},
            "roots": list(roots),
        },
    )


def flow_alert_finding(f: Flow, rule: Decision) -> IncidentFinding:
    """One flow policy alerted on, that no upload story explains."""
    dest = destination(f)
    where = f"{dest} ({f.country or '??'}, {f.dest_class})"
    title = f"{human(f.bytes_out)} sent to {where}: {rule.rule_id}"
    return IncidentFinding(
        kind="policy_alert",
        rule_id=rule.rule_id,
        pack=rule.pack,
        severity=rule.severity,
        policy_version=rule.policy_version,
        title=storable_text(title) or "",
        dedup_key=dedup_key("policy_alert", rule.rule_id, "", dest),
        time=f.end,
        bytes_out=f.bytes_out,
        evidence={
            "files": [],
            "flows": [flow_doc(f)],
            "lineage": [],
            "processes": processes([f.process]),
            "decisions": [decision_doc(f.uid, d) for d in f.decisions],
            "correlation": {"method": str(MatchMethod.DECISION), "channel": "network"},
            "roots": [],
        },
    )
