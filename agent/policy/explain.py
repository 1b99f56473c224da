"""What a classified file would trigger on each channel, on a given day: `policy explain`.

Given an `Artefact`, build the events it could be part of — written locally, to
removable media, to a network share, into a cloud-sync folder, and uploaded to a
foreign destination — on the day asked about (the legal state of a control depends on
it), and ask the policy for its decisions on each. For every category that matched, say
what an officer needs: code, name, regime, item code (and whether it is verified),
distinct terms against the minimum, confidence, the control's state on the day, and —
where it did not fire — why: below the minimum, low confidence, not in force that day,
or no rule for that channel. Pure: the caller classifies the file; no I/O happens here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.categories import reaches
from agent.events import (
    Action,
    Artefact,
    Channel,
    Decision,
    DestClass,
    FileAction,
    FileEvent,
    Flow,
    Protocol,
)
from agent.policy import facts as facts_mod
from agent.policy.conditions import All, AnyOf, Compare, Condition, Not
from agent.policy.model import Policy, highest_confidence
from agent.store.schema_map import Projection, document_value
from agent.textsafe import shown

# documentation addresses (RFC 5737): an example destination that is never contacted
EXAMPLE_SRC = "192.0.2.10"
EXAMPLE_FOREIGN_DST = "203.0.113.10"


def scenarios(
    artefact: Artefact, path: str, when: dt.datetime | None = None
) -> list[tuple[str, FileEvent | Flow]]:
    """The events the file could be part of, at `when` (default now)."""
    now = when or dt.datetime.now(dt.UTC)
    out: list[tuple[str, FileEvent | Flow]] = [
        (
            f"copy to {ch.value}",
            FileEvent(
                FileAction.WRITTEN, path, ch, size=artefact.size, artefact=artefact, time=now
            ),
        )
        for ch in (Channel.LOCAL, Channel.REMOVABLE, Channel.NETWORK_SHARE, Channel.CLOUD_SYNC)
    ]
    out.append(("upload to a foreign destination", example_upload(artefact, now)))
    return out


def example_upload(artefact: Artefact, when: dt.datetime) -> Flow:
    """`artefact` sent whole to a documentation address abroad at `when` (what `policy
    explain` and `policy eval` judge as the upload)."""
    return Flow(
        protocol=Protocol.TCP,
        src_ip=EXAMPLE_SRC,
        src_port=50000,
        dst_ip=EXAMPLE_FOREIGN_DST,
        dst_port=443,
        start=when,
        end=when,
        bytes_out=artefact.size,
        dest_class=DestClass.FOREIGN,
        country="US",
        name="upload.example.com",
    )


# a decision as `policy explain` shows it: every field of the one description but the
# policy version (the report names it once)
decision_doc = Projection(Decision, value_of=document_value, omit={"policy_version"})


def thresholds(cond: Condition, code: str) -> list[tuple[str, Any]]:
    """The numeric comparisons a condition makes on `matches.<code>` (op, value)."""
    out: list[tuple[str, Any]] = []
    stack = [cond]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Compare):
            if node.field == f"matches.{code}" and node.op in ("ge", "gt", "le", "lt", "eq"):
                out.append((node.op, node.value))
        elif isinstance(node, Not):
            stack.append(node.item)
        elif isinstance(node, All | AnyOf):
            stack.extend(node.items)
    return sorted(set(out), key=str)


def _blocking_threshold(
    policy: Policy, facts: dict[str, Any], code: str
) -> tuple[str, str, Any] | None:
    """A rule that would fire on these facts with a larger count of `code`: the count
    was below that rule's threshold (rule id, op, value)."""
    boosted = {**facts, f"matches.{code}": 10**18}
    for rule in policy.rules:
        if not rule.enabled or code not in rule.categories:
            continue
        limits = thresholds(rule.condition, code)
        if limits and not rule.fires(facts) and rule.fires(boosted):
            op, value = limits[0]
            return rule.id, op, value
    return None


def _facts(policy: Policy, artefact: Artefact, event: FileEvent | Flow) -> dict[str, Any]:
    if isinstance(event, FileEvent):
        return facts_mod.file_facts(event, policy.min_counts, policy.min_confidence)
    return facts_mod.transfer_facts(artefact, event, policy.min_counts, None, policy.min_confidence)


def explain(
    policy: Policy, artefact: Artefact, path: str, day: dt.date | None = None
) -> dict[str, Any]:
    """The report behind `policy explain FILE --on DAY` (DAY default today)."""
    day = day or dt.date.today()
    when = dt.datetime.combine(day, dt.time(12), dt.UTC)
    matched: dict[str, dict[str, Any]] = {}
    for m in artefact.matches:
        row = matched.setdefault(m.category, {"count": 0, "distinct": 0, "levels": []})
        row["count"] += m.count
        row["distinct"] += m.distinct or m.count
        row["levels"].append(m.confidence if m.distinct else "medium")
    results = []
    named: dict[str, dict[str, Decision]] = {}  # code -> scenario -> decision naming it
    present: frozenset[str] = frozenset()
    facts_of: dict[str, dict[str, Any]] = {}
    for name, event in scenarios(artefact, path, when):
        facts = _facts(policy, artefact, event)
        present = frozenset(facts.get("categories") or ())
        decisions = policy.decide(facts, day)
        facts_of[name] = facts
        for d in decisions:
            for c in d.categories:
                old = named.setdefault(c, {}).get(name)
                if old is None or (old.action != Action.ALERT and d.action == Action.ALERT):
                    named[c][name] = d
        results.append({"scenario": name, "decisions": [decision_doc(d) for d in decisions]})
    specs = {c.code: c for c in policy.categories}
    categories = []
    for code, row in sorted(matched.items()):
        spec = specs.get(code)
        info = policy.category_info.get(code, {})
        min_count = spec.min_count if spec else 1
        min_conf = policy.min_confidence.get(code, "medium")
        confidence = highest_confidence(row["levels"])
        state = policy.category_state(code, day)
        entry: dict[str, Any] = {
            "code": code,
            "count": row["count"],
            "distinct": row["distinct"],
            "min_count": min_count,
            "confidence": confidence,
            "min_confidence": min_conf,
            "present": code in present,
            "pack": info.get("pack"),
            "regime": info.get("regime"),
            "catalogue_code": info.get("catalogue_code"),
            "code_verified": bool(info.get("code_verified", True)),
            "item": policy.item(code),
            "name_en": info.get("name_en"),
            "name_zh": info.get("name_zh"),
            "control": info.get("control"),
            "in_force": state.in_force,
            "control_state": state.state if state.verified else f"{state.state} (unverified)",
            "control_state_text": state.describe(),
            "thresholds": [
                {"rule_id": r.id, "op": op, "value": value}
                for r in policy.rules
                if r.enabled
                for op, value in thresholds(r.condition, code)
            ],
            "fired": [],
            "not_fired": [],
        }
        for name, facts in facts_of.items():
            naming = named.get(code, {}).get(name)
            if naming is not None and naming.action == Action.ALERT:
                if entry["in_force"]:
                    entry["fired"].append({"scenario": name, "rule_id": naming.rule_id})
                else:  # the alert rests on another entry of the same decision
                    why = f"{entry['control_state_text']} on this day; {naming.rule_id} alerts"
                    entry["not_fired"].append({"scenario": name, "why": why + " on another entry"})
                continue
            why = _why_not(entry, naming, present)
            if why == "no rule for this channel":
                blocked = _blocking_threshold(policy, facts, code)
                if blocked is not None:
                    rule_id, op, value = blocked
                    why = f"below the rule's threshold: {row['count']}, needs {op} {value}"
                    why += f" ({rule_id})"
            entry["not_fired"].append({"scenario": name, "why": why})
        categories.append(entry)
    return {
        "path": path,
        "day": day.isoformat(),
        "size": artefact.size,
        "sha256": artefact.sha256,
        "kinds": list(artefact.kinds),
        "tags": [{"kind": t.kind, "evidence": t.evidence} for t in artefact.tags],
        "categories": categories,
        "scenarios": results,
        "policy_version": policy.version,
    }


def _why_not(entry: dict[str, Any], d: Decision | None, present: frozenset[str]) -> str:
    """Why a matched category raised no alert on one channel, in the order that decides."""
    if entry["code"] not in present:
        if entry["distinct"] < entry["min_count"]:
            return (
                f"below minimum: {entry['distinct']} distinct term(s), "
                f"min_count {entry['min_count']}"
            )
        if not reaches(entry["confidence"], entry["min_confidence"]):
            return (
                f"low confidence: {entry['confidence'] or 'none'}, "
                f"needs {entry['min_confidence']} (no corroborating evidence near the terms)"
            )
        return "not present"
    if d is not None:
        if not d.in_force:
            return f"recorded only: {d.control_state.replace('_', ' ')} on this day ({d.rule_id})"
        return f"recorded only: rule {d.rule_id} records"
    if entry["control"] == "indicator":
        return "context indicator only (not an entry of its own)"
    return "no rule for this channel"


def format_text(report: dict[str, Any]) -> list[str]:
    """The report as lines for a person."""
    # the path and the tags' evidence are outside text: shown() keeps each on one line
    kinds = ", ".join(report["kinds"]) or "-"
    out = [f"{shown(report['path'])}: {report['size']} bytes, kinds {kinds}"]
    out += [f"  {t['kind']}: {shown(t['evidence'])}" for t in report["tags"]]
    out.append(f"on {report['day']}:")
    if report["categories"]:
        out.append("categories:")
    for c in report["categories"]:
        name = c["name_zh"] or c["name_en"] or ""
        out.append(
            f"  {c['code']} ×{c['count']} {c['item']} {name} — regime {c['regime'] or '-'},"
            f" {c['distinct']} distinct / min {c['min_count']},"
            f" confidence {c['confidence'] or '-'} (needs {c['min_confidence']}),"
            f" {c['control_state_text']}"
        )
        for t in c["thresholds"]:
            out.append(f"    threshold: {t['rule_id']} needs {t['op']} {t['value']}")
        for f in c["fired"]:
            out.append(f"    fired: {f['scenario']} ({f['rule_id']})")
        for n in c["not_fired"]:
            out.append(f"    not fired: {n['scenario']} — {n['why']}")
    for sc in report["scenarios"]:
        out.append(f"{sc['scenario']}:")
        if not sc["decisions"]:
            out.append("  no rule")
        for d in sc["decisions"]:
            out.append(f"  {d['severity']:<8} {d['action']:<6} {d['rule_id']} ({d['pack']})")
            state = d["control_state"].replace("_", " ")
            out.append(
                f"    regime {d['regime'] or '-'} · item {d['item'] or '-'}"
                f" · law {d['legal_ref'] or '-'}"
                f" · in force that day: {'yes' if d['in_force'] else 'no'} ({state})"
                f" · confidence {d['confidence'] or '-'}"
            )
    return out
