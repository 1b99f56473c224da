"""Correlation: judged events in, incident findings out (pure logic, no I/O).

This module orchestrates; `matching.py` decides which touches a flow carried and
`findings.py` tells each story with its evidence.

Sits after policy in the pipeline, beside the store writer. It remembers, for
`incidents.correlation_window`, which tagged artefacts each process read, copied,
archived or wrote ("touches"), and the recent outbound flows to external destinations.
A flow that follows a touch by the same process (or one of its children) and carries a
comparable number of bytes (`incidents.byte_tolerance`, relative) is a candidate
upload. It becomes an `exfiltration` story — the touched files, their lineage back to
the original artefact, the flow and the decisions — only when policy alerts on the
transfer (a rule of some pack on the artefact as carried by that flow, e.g. the
`rd-assets` pack's upload rules) or on the flow itself. Copies to removable media and
cloud-sync folders that policy alerts on are stories of their own; other alerting
decisions are `policy_alert`s. Time is the events' own time, so replays and tests are
deterministic.

The correlator only correlates; policy decides. It has no severity or alerting threshold
of its own: an incident carries the severity of the decision it is named after, and any
decision with `action: alert` opens one. Each artefact is judged once per flow (a
story refined by a later, closer match reuses the decisions), so a transfer decision is
counted once in `egress_agent_decisions_total`.

When the file sensor has never attributed a file event to a process (no fanotify
here) and the flow's process is unknown, the match falls back to bytes and time alone
(`method: size_and_time`), for artefacts of at least `MIN_UNATTRIBUTED_BYTES`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from agent.events import (
    Artefact,
    Channel,
    Decision,
    DestClass,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
)
from agent.incidents.ancestry import Ancestry
from agent.incidents.evidence import size_of
from agent.incidents.findings import (
    choose_rule,
    dedup_key,
    destination,
    exfiltration_finding,
    file_finding,
    flow_alert_finding,
    is_alerting,
)
from agent.incidents.lineage import ArtefactMemory, ParentsOf
from agent.incidents.matching import (
    CLOCK_SKEW,
    MIN_UNATTRIBUTED_BYTES,
    Match,
    Touch,
    TouchWindow,
)
from agent.incidents.model import METHOD_RANK, IncidentFinding
from agent.incidents.repository import RepositoryMemory, is_push, push_finding
from agent.incidents.tree import MIN_TREE_FILES, JudgeTree, TreeCopies, facts_of, tree_finding

__all__ = [
    "CLOCK_SKEW",
    "EXTERNAL",
    "MIN_UNATTRIBUTED_BYTES",
    "CorrelationCore",
    "JudgeTransfer",
    "Match",
    "Touch",
    "is_alerting",
    "is_tagged",
]

EXTERNAL = frozenset({DestClass.FOREIGN, DestClass.UNKNOWN, DestClass.DOMESTIC})
TOUCH_ACTIONS = frozenset(
    {FileAction.READ, FileAction.WRITTEN, FileAction.MOVED, FileAction.CREATED}
)
# a copy shows as created then written (or as a move); both belong to one copy incident
COPY_ACTIONS = frozenset({FileAction.CREATED, FileAction.WRITTEN, FileAction.MOVED})
COPY_KINDS = {Channel.REMOVABLE: "removable_copy", Channel.CLOUD_SYNC: "cloud_sync_copy"}
MAX_MATCHED_FLOWS = 20_000
MAX_JUDGED = 20_000  # (flow, artefact) pairs whose transfer decisions are remembered

JudgeTransfer = Callable[[Artefact, Flow, FileEvent], Sequence[Decision]]
"""Policy on an artefact that left in a flow (`Policy.decide_transfer`)."""


def is_tagged(e: FileEvent) -> bool:
    a = e.artefact
    return bool(a and (a.tags or a.matches)) or any(is_alerting(d) for d in e.decisions)


class CorrelationCore:
    """The correlator's pure core: its window, its memories and the stories it told."""

    def __init__(
        self,
        window: float = 900.0,
        byte_tolerance: float = 0.5,
        parents_of: ParentsOf | None = None,
        judge_transfer: JudgeTransfer | None = None,
        ancestry: Ancestry | None = None,
        judge_tree: JudgeTree | None = None,
    ) -> None:
        self.window = timedelta(seconds=window)
        self.tolerance = byte_tolerance
        self._judge_transfer = judge_transfer
        self.ancestry = ancestry if ancestry is not None else Ancestry(proc=None)
        self.touches = TouchWindow(self.window, byte_tolerance, self.ancestry)
        self.memory = ArtefactMemory(parents_of)
        self._matched_flows: OrderedDict[str, str] = OrderedDict()  # flow uid -> method
        # (flow uid, artefact key) -> policy on that transfer, judged once
        self._judged: OrderedDict[tuple[str, str], tuple[Decision, ...]] = OrderedDict()
        self._now: datetime | None = None
        self.repositories = RepositoryMemory()
        self.trees = TreeCopies()
        self._judge_tree = judge_tree

    # --- feeding -----------------------------------------------------------------
    def observe(self, event: FileEvent | Flow) -> list[IncidentFinding]:
        self._advance(event.time)
        self._learn_process(event.process)
        closed = self.close_trees(self._now)
        if isinstance(event, FileEvent):
            return closed + self._on_file(event)
        return closed + self._on_flow(event)

    @property
    def now(self) -> datetime | None:
        """The newest event time seen (the correlator's clock)."""
        return self._now

    def close_trees(self, now: datetime | None, final: bool = False) -> list[IncidentFinding]:
        """Whole-tree copies that went quiet by `now` (all when `final`), as policy judges them."""
        out: list[IncidentFinding] = []
        for tree in self.trees.due(now, final):
            if tree.files_count < MIN_TREE_FILES or self._judge_tree is None:
                continue
            facts = facts_of(tree)
            decisions = list(self._judge_tree(facts))
            rule = choose_rule([("tree", d) for d in decisions if is_alerting(d)])
            if rule is None:
                continue
            key = dedup_key("tree_copy", rule.rule_id, facts.root, facts.channel)
            out.append(tree_finding(tree, facts, decisions, rule, key))
        return out

    def comparable(self, file_bytes: int, flow_bytes: int) -> bool:
        return self.touches.comparable(file_bytes, flow_bytes)

    def lineage(self, shas: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        return self.memory.lineage(shas)

    def _advance(self, t: datetime) -> None:
        if self._now is None or t > self._now:
            self._now = t
        self.touches.expire(self._now)

    def _learn_process(self, p: ProcessInfo | None) -> None:
        if p is not None:
            self.ancestry.learn(p.pid, p.ppid)

    def _on_file(self, e: FileEvent) -> list[IncidentFinding]:
        if e.process is not None and e.process.pid is not None:
            self.touches.file_attribution = True
        a = e.artefact
        sha = a.sha256 if a and a.sha256 else None
        if sha and a is not None and a.parents:
            self.memory.remember_parents(sha, tuple(p for p in a.parents if p != sha))
        tree = self.trees.note(e) if a is not None else None
        if not is_tagged(e):
            return []
        self.repositories.note(e)
        key = sha or f"path:{e.current_path}"
        seen = self.memory.seen_for(key)
        seen.events.append(e)
        findings: list[IncidentFinding] = []
        alerting = [d for d in e.decisions if is_alerting(d)]
        if alerting and e.action in COPY_ACTIONS and e.channel in COPY_KINDS:
            findings.append(self._copy_finding(e, key, COPY_KINDS[e.channel], alerting))
            if tree is not None:  # the tree's story, when it has one, absorbs this file's
                tree.alert_keys.add(findings[-1].dedup_key)
        elif alerting:
            f = self._alert_finding(e, key, alerting)
            if e.channel == Channel.LOCAL:
                for root in self.memory.roots(key):
                    self.memory.seen_for(root).alert_keys.add(f.dedup_key)
                seen.alert_keys.add(f.dedup_key)
            findings.append(f)
        if e.action in TOUCH_ACTIONS:
            touch = Touch(e, key, size_of(e))
            self.touches.add_touch(touch)
            # events from different sensors arrive in no guaranteed order: a read by the
            # uploader may reach us after its flow did
            for flow, flow_key in self.touches.flows():
                if flow.end + CLOCK_SKEW < e.time:
                    continue
                match = self.touches.match(flow, [touch])
                if match is None:
                    continue
                before = self._matched_flows.get(flow.uid)
                if before is not None and METHOD_RANK[match.method] <= METHOD_RANK[before]:
                    continue
                story = self._exfil_finding(flow, match, flow_key)
                if story is not None:
                    findings.append(story)
        return findings

    def _on_flow(self, f: Flow) -> list[IncidentFinding]:
        alerting = [d for d in f.decisions if is_alerting(d)]
        if alerting and is_push(f):  # the repository is the story, not the files it read
            rule = choose_rule([(f.uid, d) for d in alerting])
            assert rule is not None
            root = str((f.repository or {}).get("root") or "")
            key = dedup_key("repository_push", rule.rule_id, root, destination(f))
            return [push_finding(f, rule, self.repositories, key)]
        if f.dest_class not in EXTERNAL:
            return [self._flow_alert_finding(f, alerting)] if alerting else []
        match = self.touches.match(f, self.touches.candidates(f))
        flow_key = None
        findings: list[IncidentFinding] = []
        story = self._exfil_finding(f, match, None) if match is not None else None
        if story is not None:
            findings.append(story)
        elif alerting:
            finding = self._flow_alert_finding(f, alerting)
            flow_key = finding.dedup_key
            findings.append(finding)
        if f.bytes_out > 0:  # kept for touches that arrive later, matched or not
            self.touches.add_flow(f, flow_key)
        return findings

    # --- gathering a story -----------------------------------------------------------
    def _exfil_finding(
        self, flow: Flow, match: Match, flow_key: str | None
    ) -> IncidentFinding | None:
        """The upload story of `flow`, or None when no policy alerts on it."""
        shas = [t.sha for t in match.touches]
        nodes, edges = self.lineage(shas)
        children = {c for _p, c in edges}
        roots = sorted(n for n in nodes if n not in children) or sorted(set(shas))
        events: dict[str, FileEvent] = {}
        for t in match.touches:
            events[t.event.uid] = t.event
        supersedes: set[str] = {flow_key} if flow_key else set()
        for sha in nodes:
            seen = self.memory.get(sha)
            if seen is None:
                continue
            supersedes |= seen.alert_keys
            for e in seen.events:
                events.setdefault(e.uid, e)
        files = sorted(events.values(), key=lambda e: e.time)
        transfer = self._transfer_decisions(flow, files)
        about_flow = [(flow.uid, d) for d in (*transfer, *flow.decisions)]
        # named after what policy says about the transfer itself; nothing alerts, no story
        rule = choose_rule([x for x in about_flow if is_alerting(x[1])])
        if rule is None:
            return None
        self._matched_flows[flow.uid] = match.method
        self._matched_flows.move_to_end(flow.uid)
        while len(self._matched_flows) > MAX_MATCHED_FLOWS:
            self._matched_flows.popitem(last=False)
        decisions = about_flow + [(e.uid, d) for e in files for d in e.decisions]
        return exfiltration_finding(
            flow,
            match,
            files,
            rule,
            decisions,
            edges,
            roots,
            supersedes,
            self.window,
            self.tolerance,
        )

    def _transfer_decisions(self, flow: Flow, files: Sequence[FileEvent]) -> list[Decision]:
        """Policy on each distinct artefact of the story as carried by `flow`.

        Each (flow, artefact) is judged once and remembered: a story refined by a later
        touch reuses the decisions instead of deciding (and counting) them again.
        """
        if self._judge_transfer is None:
            return []
        out: dict[tuple[str, str], Decision] = {}
        seen: set[str] = set()
        for e in reversed(files):
            a = e.artefact
            if a is None or (a.sha256 or e.uid) in seen:
                continue
            seen.add(a.sha256 or e.uid)
            key = (flow.uid, a.sha256 or e.uid)
            judged = self._judged.get(key)
            if judged is None:
                judged = tuple(self._judge_transfer(a, flow, e))
                self._judged[key] = judged
                while len(self._judged) > MAX_JUDGED:
                    self._judged.popitem(last=False)
            for d in judged:
                out.setdefault((d.pack, d.rule_id), d)
        return list(out.values())

    def _file_finding(
        self, e: FileEvent, key: str, kind: str, alerting: list[Decision], what: str
    ) -> IncidentFinding:
        rule = choose_rule([(e.uid, d) for d in alerting])
        assert rule is not None
        roots = self.memory.roots(key)
        nodes, edges = self.lineage([key])
        lineage_events = [
            ev
            for sha in nodes
            if sha != key and (seen := self.memory.get(sha)) is not None
            for ev in seen.events
        ]
        return file_finding(e, kind, rule, what, roots, edges, lineage_events)

    def _copy_finding(
        self, e: FileEvent, key: str, kind: str, alerting: list[Decision]
    ) -> IncidentFinding:
        where = "removable media" if kind == "removable_copy" else "a cloud-sync folder"
        return self._file_finding(e, key, kind, alerting, f"copied to {where}")

    def _alert_finding(self, e: FileEvent, key: str, alerting: list[Decision]) -> IncidentFinding:
        return self._file_finding(e, key, "policy_alert", alerting, f"{e.action} on {e.channel}")

    def _flow_alert_finding(self, f: Flow, alerting: list[Decision]) -> IncidentFinding:
        rule = choose_rule([(f.uid, d) for d in alerting])
        assert rule is not None
        return flow_alert_finding(f, rule)
