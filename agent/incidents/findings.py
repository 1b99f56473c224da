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
    evidence_of,
    file_doc,
    flow_doc,
    human,
    processes,
    size_of,
)
from agent.incidents.matching import Match
from agent.incidents.model import IncidentFinding


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
    evidence = evidence_of(
        {
            "method": str(match.method),
            "file_bytes": match.file_bytes,
            "flow_bytes": flow.bytes_out,
            "window_seconds": int(window.total_seconds()),
            "tolerance_percent": round(tolerance * 100),
        },
        files=[file_doc(e, "touched" if e.uid in touched_uids else "lineage") for e in files],
        flows=[flow_doc(flow)],
        lineage=lineage,
        procs=processes([flow.process, *(e.process for e in files)]),
        decisions=[decision_doc(uid, d) for uid, d in decisions],
        roots=roots,
    )
    key = dedup_key("exfiltration", rule.rule_id, roots[0], dest)
    return IncidentFinding.named_after(
        rule, "exfiltration", title, key, flow.end, evidence, flow.bytes_out, supersedes
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
    title = f"{describe(e)} ({human(size_of(e))}) {what}: {rule.rule_id}"
    evidence = evidence_of(
        {"method": str(MatchMethod.DECISION), "channel": str(e.channel)},
        files=[file_doc(e, "touched")] + [file_doc(ev, "lineage") for ev in lineage_events],
        lineage=lineage,
        procs=processes([e.process]),
        decisions=[decision_doc(e.uid, d) for d in e.decisions],
        roots=roots,
    )
    key = dedup_key(kind, rule.rule_id, roots[0], str(e.channel))
    return IncidentFinding.named_after(rule, kind, title, key, e.time, evidence)


def flow_alert_finding(f: Flow, rule: Decision) -> IncidentFinding:
    """One flow policy alerted on, that no upload story explains."""
    dest = destination(f)
    where = f"{dest} ({f.country or '??'}, {f.dest_class})"
    title = f"{human(f.bytes_out)} sent to {where}: {rule.rule_id}"
    evidence = evidence_of(
        {"method": str(MatchMethod.DECISION), "channel": "network"},
        flows=[flow_doc(f)],
        procs=processes([f.process]),
        decisions=[decision_doc(f.uid, d) for d in f.decisions],
    )
    key = dedup_key("policy_alert", rule.rule_id, "", dest)
    return IncidentFinding.named_after(
        rule, "policy_alert", title, key, f.end, evidence, f.bytes_out
    )
