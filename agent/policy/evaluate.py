"""`policy eval`: run labelled cases through the real classifier and policy, and score them.

The packs are only worth what they conclude, so their judgement is measured, not
assumed: each case file is classified once, then put on every channel its labels
name — written to local disk, removable media, a network share or a cloud-sync
folder (a `FileEvent`), or uploaded to a foreign destination (a transfer: the file's
artefact and a `Flow` of its size) — and the policy's decisions become an outcome:
`alert` when a decision alerts (at the case's minimum severity, when one is given),
`record` when any rule decided, else `none`. The score is the (expected, got)
table per channel and alert precision and recall, per channel and over all
channels, plus every mismatch with what fired. `outcome_of` and `score` are pure;
`run_cases` is the thin shell that classifies files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.events import (
    Action,
    Artefact,
    Channel,
    Decision,
    FileAction,
    FileEvent,
    Flow,
)
from agent.policy.evalset import CHANNELS, OUTCOMES, Case, CaseSet, Expectation
from agent.policy.explain import example_upload
from agent.policy.model import Policy
from agent.store.schema_map import Projection, document_value
from agent.textsafe import shown

# a decision in the score's mismatches: who decided, how badly, on which categories
_DECISION_SCORED = Projection(
    Decision,
    value_of=document_value,
    omit={
        "policy_version",
        "reason",
        "regime",
        "legal_ref",
        "item",
        "in_force",
        "control_state",
    },
    convert={"confidence": lambda c: c or None},
)


@dataclass(frozen=True, slots=True)
class CategorySeen:
    """A category that matched the file, with what decides whether it is present."""

    code: str
    count: int
    distinct: int
    min_count: int
    confidence: str


@dataclass(frozen=True, slots=True)
class Result:
    """One case on one channel: what was expected, what the policy concluded, and why."""

    case: str
    channel: str
    expected: Expectation
    got: str  # "none" | "record" | "alert"
    decisions: tuple[Decision, ...] = ()
    ref: str = ""
    kinds: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()  # the classifier's tags, as a person reads them
    categories: tuple[CategorySeen, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.got == self.expected.outcome


@dataclass(frozen=True, slots=True)
class ChannelScore:
    confusion: Mapping[tuple[str, str], int]  # (expected, got) -> cases
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        """Alerts raised that should have been; None when nothing alerted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """Alerts that should have been raised and were; None when none were expected."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def cases(self) -> int:
        return sum(self.confusion.values())


@dataclass(frozen=True, slots=True)
class Score:
    channels: Mapping[str, ChannelScore]
    overall: ChannelScore
    mismatches: tuple[Result, ...] = field(default=())

    def gate_failures(self, min_precision: float | None, min_recall: float | None) -> list[str]:
        """Each channel (and overall) below a threshold, as `channel: precision 0.80 < 0.95`.

        A metric with nothing to measure (no alert expected or raised) cannot fail.
        """
        out = []
        for name, sc in [*self.channels.items(), ("overall", self.overall)]:
            for metric, value, floor in (
                ("precision", sc.precision, min_precision),
                ("recall", sc.recall, min_recall),
            ):
                if floor is not None and value is not None and value < floor:
                    out.append(f"{name}: alert {metric} {value:.3f} < {floor}")
        return out


def outcome_of(decisions: Iterable[Decision], expected: Expectation) -> str:
    """alert / record / none; an alert below the case's minimum severity counts as record."""
    decisions = list(decisions)
    floor = expected.min_severity.rank if expected.min_severity else -1
    if any(d.action == Action.ALERT and d.severity.rank >= floor for d in decisions):
        return "alert"
    return "record" if decisions else "none"


def score(results: Iterable[Result]) -> Score:
    """The (expected, got) tables and alert precision/recall: pure arithmetic."""
    per: dict[str, dict[tuple[str, str], int]] = {}
    mismatches = []
    for r in results:
        table = per.setdefault(r.channel, {})
        key = (r.expected.outcome, r.got)
        table[key] = table.get(key, 0) + 1
        if not r.ok:
            mismatches.append(r)
    channels = {ch: _channel_score(per[ch]) for ch in (*CHANNELS, *sorted(per)) if ch in per}
    total: dict[tuple[str, str], int] = {}
    for table in per.values():
        for key, n in table.items():
            total[key] = total.get(key, 0) + n
    return Score(channels, _channel_score(total), tuple(mismatches))


def _channel_score(table: Mapping[tuple[str, str], int]) -> ChannelScore:
    tp = table.get(("alert", "alert"), 0)
    fp = sum(n for (e, g), n in table.items() if g == "alert" and e != "alert")
    fn = sum(n for (e, g), n in table.items() if e == "alert" and g != "alert")
    return ChannelScore(dict(table), tp, fp, fn)


def event_for(channel: str, artefact: Artefact, path: str, day: dt.date) -> FileEvent | Flow:
    """The event that puts this file on `channel` on `day`, at noon host time.

    Noon in the host's zone, so rules on `hour` see working hours wherever it runs.
    """
    when = dt.datetime.combine(day, dt.time(12)).astimezone()
    if channel == "abroad":
        return example_upload(artefact, when)
    return FileEvent(
        FileAction.WRITTEN, path, Channel(channel), size=artefact.size, artefact=artefact, time=when
    )


def decide_case(policy: Policy, case: Case, artefact: Artefact, day: dt.date) -> list[Result]:
    """Every labelled channel of one classified case: pure given the artefact."""
    path = str(case.path)
    cats = tuple(
        CategorySeen(
            m.category,
            m.count,
            m.distinct,
            policy.min_counts.get(m.category, 1),
            m.confidence,
        )
        for m in artefact.matches
    )
    out = []
    for channel, expected in case.expect.items():
        event = event_for(channel, artefact, path, day)
        if isinstance(event, Flow):
            decisions = policy.decide_transfer(artefact, event)
        else:
            decisions = policy.decide_file(event)
        out.append(
            Result(
                case=case.id,
                channel=channel,
                expected=expected,
                got=outcome_of(decisions, expected),
                decisions=tuple(decisions),
                ref=case.ref,
                kinds=artefact.kinds,
                evidence=tuple(f"{t.kind}: {t.evidence}"[:160] for t in artefact.tags),
                categories=cats,
                skipped=artefact.skipped,
            )
        )
    return out


def run_cases(
    policy: Policy,
    case_set: CaseSet,
    classify: Callable[[str], Artefact],
    day: dt.date | None = None,
) -> tuple[list[Result], Score]:
    """Classify each case file with `classify` and decide it on its channels."""
    when = day or case_set.day or dt.date.today()
    results: list[Result] = []
    for case in case_set.cases:
        results.extend(decide_case(policy, case, classify(str(case.path)), when))
    return results, score(results)


# --- the report ---------------------------------------------------------------------


def _ratio(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _score_doc(sc: ChannelScore) -> dict[str, Any]:
    return {
        "cases": sc.cases,
        "counts": {f"{e}/{g}": n for (e, g), n in sorted(sc.confusion.items())},
        "alert_tp": sc.tp,
        "alert_fp": sc.fp,
        "alert_fn": sc.fn,
        "alert_precision": _ratio(sc.precision),
        "alert_recall": _ratio(sc.recall),
    }


def _result_doc(r: Result) -> dict[str, Any]:
    return {
        "case": r.case,
        "file": r.ref,
        "channel": r.channel,
        "expected": str(r.expected),
        "got": r.got,
        "kinds": list(r.kinds),
        "tags": list(r.evidence),
        "skipped": r.skipped,
        "categories": [
            {
                "code": c.code,
                "count": c.count,
                "distinct": c.distinct,
                "min_count": c.min_count,
                "confidence": c.confidence or None,
            }
            for c in r.categories
        ],
        "decisions": [_DECISION_SCORED(d) for d in r.decisions],
    }


def report(
    case_set: CaseSet,
    policy: Policy,
    sc: Score,
    day: dt.date,
    gate: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole evaluation as one JSON-ready document (`policy eval --json`)."""
    return {
        "manifest": str(case_set.manifest),
        "cases": len(case_set.cases),
        "day": day.isoformat(),
        "policy_version": policy.version,
        "channels": {ch: _score_doc(s) for ch, s in sc.channels.items()},
        "overall": _score_doc(sc.overall),
        "mismatches": [_result_doc(r) for r in sc.mismatches],
        "gate_failures": list(gate),
    }


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_text(doc: Mapping[str, Any]) -> list[str]:
    """The human report: one table of (expected → got) per channel, then the mismatches.

    Case ids, file references and tag evidence come from the case set and the files:
    each line goes through `shown()` so none can forge or hide a line.
    """
    lines = [
        f"{doc['cases']} cases from {doc['manifest']} on {doc['day']}, "
        f"policy {str(doc['policy_version'])[:12]}",
        "",
        f"{'channel':<14} {'cases':>5}  "
        + "  ".join(f"{e[0]}→{g[0]}" for e in OUTCOMES for g in OUTCOMES)
        + "  precision  recall",
    ]
    for name, s in [*doc["channels"].items(), ("overall", doc["overall"])]:
        cells = "  ".join(
            f"{s['counts'].get(f'{e}/{g}', 0):>3}" for e in OUTCOMES for g in OUTCOMES
        )
        lines.append(
            f"{name:<14} {s['cases']:>5}  {cells}  "
            f"{_pct(s['alert_precision']):>9}  {_pct(s['alert_recall']):>6}"
        )
    lines.append("(n→a: expected none, got alert; precision and recall are of alerts)")
    if doc["mismatches"]:
        lines += ["", f"{len(doc['mismatches'])} mismatch(es):"]
    for m in doc["mismatches"]:
        lines.append(
            f"  {m['case']} [{m['channel']}] expected {m['expected']}, got {m['got']}"
            f"  ({m['file']})"
        )
        kinds = ", ".join(m["kinds"]) or "-"
        cats = ", ".join(
            f"{c['code']}×{c['count']} ({c['distinct']}/{c['min_count']} terms"
            + (f", {c['confidence']})" if c["confidence"] else ")")
            for c in m["categories"]
        )
        lines.append(
            f"    kinds {kinds}"
            + (f"; categories {cats}" if cats else "")
            + (f"; skipped {m['skipped']}" if m["skipped"] else "")
        )
        lines.extend(f"    {t}" for t in m["tags"])
        for d in m["decisions"]:
            conf = f" confidence {d['confidence']}" if d["confidence"] else ""
            lines.append(
                f"    {d['severity']:<8} {d['action']:<6} {d['rule_id']} ({d['pack']}){conf}"
            )
    for g in doc["gate_failures"]:
        lines.append(f"gate not met: {g}")
    return [shown(line) for line in lines]
