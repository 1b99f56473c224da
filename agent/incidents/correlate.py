"""Correlation: judged events in, incident findings out (pure logic, no I/O).

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

import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.events import (
    Artefact,
    Channel,
    Decision,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
)
from agent.incidents.ancestry import Ancestry
from agent.incidents.evidence import (
    decision_doc,
    describe,
    file_doc,
    flow_doc,
    human,
    processes,
    size_of,
)
from agent.incidents.lineage import ArtefactMemory, ParentsOf
from agent.incidents.model import METHOD_RANK, Finding
from agent.incidents.repository import RepositoryMemory, is_push, push_finding
from agent.incidents.tree import MIN_TREE_FILES, JudgeTree, TreeCopies, facts_of, tree_finding
from agent.store.rows import storable_text

EXTERNAL = frozenset({"foreign", "unknown", "domestic"})
TOUCH_ACTIONS = frozenset(
    {FileAction.READ, FileAction.WRITTEN, FileAction.MOVED, FileAction.CREATED}
)
# a copy shows as created then written (or as a move); both belong to one copy incident
COPY_ACTIONS = frozenset({FileAction.CREATED, FileAction.WRITTEN, FileAction.MOVED})
COPY_KINDS = {Channel.REMOVABLE: "removable_copy", Channel.CLOUD_SYNC: "cloud_sync_copy"}
MIN_UNATTRIBUTED_BYTES = 64 * 1024
CLOCK_SKEW = timedelta(seconds=5)
MAX_MATCHED_FLOWS = 20_000
MAX_JUDGED = 20_000  # (flow, artefact) pairs whose transfer decisions are remembered

JudgeTransfer = Callable[[Artefact, Flow, FileEvent], Sequence[Decision]]
"""Policy on an artefact that left in a flow (`Policy.decide_transfer`)."""


def is_alerting(d: Decision) -> bool:
    """An alert opens an incident whatever its severity: the pack chose alert over record."""
    return d.action == "alert"


def is_tagged(e: FileEvent) -> bool:
    a = e.artefact
    return bool(a and (a.tags or a.matches)) or any(is_alerting(d) for d in e.decisions)


def dedup_key(kind: str, rule_id: str, root: str, dest: str) -> str:
    return hashlib.sha256(f"{kind}\x1f{rule_id}\x1f{root}\x1f{dest}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Touch:
    event: FileEvent
    sha: str
    size: int

    @property
    def pid(self) -> int | None:
        return self.event.process.pid if self.event.process else None


@dataclass(frozen=True, slots=True)
class Match:
    touches: tuple[Touch, ...]
    method: str  # same_process | child_process | size_and_time
    file_bytes: int


class CorrelationEngine:
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
        self._touches: deque[Touch] = deque()  # in time order, for expiry
        self._by_pid: dict[int | None, deque[Touch]] = {}  # the same touches by process
        self._flows: deque[tuple[Flow, str | None]] = deque()  # (flow, its policy-alert key)
        self.memory = ArtefactMemory(parents_of)
        self._matched_flows: OrderedDict[str, str] = OrderedDict()  # flow uid -> method
        # (flow uid, artefact key) -> policy on that transfer, judged once
        self._judged: OrderedDict[tuple[str, str], tuple[Decision, ...]] = OrderedDict()
        self._file_attribution = False
        self._now: datetime | None = None
        self.repositories = RepositoryMemory()
        self.trees = TreeCopies()
        self._judge_tree = judge_tree

    # --- feeding -----------------------------------------------------------------
    def observe(self, event: FileEvent | Flow) -> list[Finding]:
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

    def close_trees(self, now: datetime | None, final: bool = False) -> list[Finding]:
        """Whole-tree copies that went quiet by `now` (all when `final`), as policy judges them."""
        out: list[Finding] = []
        for tree in self.trees.due(now, final):
            if tree.files_count < MIN_TREE_FILES or self._judge_tree is None:
                continue
            facts = facts_of(tree)
            decisions = list(self._judge_tree(facts))
            rule = _choose_rule([("tree", d) for d in decisions if is_alerting(d)])
            if rule is None:
                continue
            key = dedup_key("tree_copy", rule.rule_id, facts.root, facts.channel)
            out.append(tree_finding(tree, facts, decisions, rule, key))
        return out

    def _advance(self, t: datetime) -> None:
        if self._now is None or t > self._now:
            self._now = t
        horizon = self._now - self.window - CLOCK_SKEW
        while self._touches and self._touches[0].event.time < horizon:
            old = self._touches.popleft()
            mine = self._by_pid.get(old.pid)
            if mine:
                mine.popleft()  # touches enter both queues in the same order
                if not mine:
                    del self._by_pid[old.pid]
        while self._flows and self._flows[0][0].end < horizon:
            self._flows.popleft()

    def _learn_process(self, p: ProcessInfo | None) -> None:
        if p is not None:
            self.ancestry.learn(p.pid, p.ppid)

    def _on_file(self, e: FileEvent) -> list[Finding]:
        if e.process is not None and e.process.pid is not None:
            self._file_attribution = True
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
        findings: list[Finding] = []
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
            self._touches.append(touch)
            self._by_pid.setdefault(touch.pid, deque()).append(touch)
            # events from different sensors arrive in no guaranteed order: a read by the
            # uploader may reach us after its flow did
            for flow, flow_key in list(self._flows):
                if flow.end + CLOCK_SKEW < e.time:
                    continue
                match = self._match(flow, [touch])
                if match is None:
                    continue
                before = self._matched_flows.get(flow.uid)
                if before is not None and METHOD_RANK[match.method] <= METHOD_RANK[before]:
                    continue
                story = self._exfil_finding(flow, match, flow_key)
                if story is not None:
                    findings.append(story)
        return findings

    def _on_flow(self, f: Flow) -> list[Finding]:
        alerting = [d for d in f.decisions if is_alerting(d)]
        if alerting and is_push(f):  # the repository is the story, not the files it read
            rule = _choose_rule([(f.uid, d) for d in alerting])
            assert rule is not None
            root = str((f.repository or {}).get("root") or "")
            dest = f.sni or f.name or f.dst_ip
            key = dedup_key("repository_push", rule.rule_id, root, dest)
            return [push_finding(f, rule, self.repositories, key)]
        if f.dest_class not in EXTERNAL:
            return [self._flow_alert_finding(f, alerting)] if alerting else []
        match = self._match(f, self._candidates(f))
        flow_key = None
        findings: list[Finding] = []
        story = self._exfil_finding(f, match, None) if match is not None else None
        if story is not None:
            findings.append(story)
        elif alerting:
            finding = self._flow_alert_finding(f, alerting)
            flow_key = finding.dedup_key
            findings.append(finding)
        if f.bytes_out > 0:  # kept for touches that arrive later, matched or not
            self._flows.append((f, flow_key))
        return findings

    # --- matching ------------------------------------------------------------------
    def _candidates(self, flow: Flow) -> list[Touch]:
        """Touches that could belong to `flow`: by its process and ancestors, or unattributed."""
        fpid = flow.process.pid if flow.process else None
        if fpid is None:
            return list(self._touches)
        out: list[Touch] = []
        for pid in (fpid, *self.ancestry.ancestors(fpid)):
            out.extend(self._by_pid.get(pid, ()))
        if not self._file_attribution:
            out.extend(self._by_pid.get(None, ()))
        return out

    def _relation(self, touch: Touch, flow: Flow) -> str | None:
        fpid = flow.process.pid if flow.process else None
        if fpid is None:
            return "size_and_time"
        if touch.pid is None:
            return None if self._file_attribution else "size_and_time"
        if touch.pid == fpid:
            return "same_process"
        if touch.pid in self.ancestry.ancestors(fpid):
            return "child_process"
        return None

    def comparable(self, file_bytes: int, flow_bytes: int) -> bool:
        if file_bytes <= 0 or flow_bytes <= 0:
            return False
        return abs(flow_bytes - file_bytes) <= self.tolerance * file_bytes

    def _match(self, flow: Flow, touches: Iterable[Touch]) -> Match | None:
        lo = flow.start - self.window
        hi = flow.end + CLOCK_SKEW
        by_method: dict[str, list[Touch]] = {}
        for t in touches:
            if not lo <= t.event.time <= hi:
                continue
            rel = self._relation(t, flow)
            if rel is None:
                continue
            if rel == "size_and_time" and t.size < MIN_UNATTRIBUTED_BYTES:
                continue
            by_method.setdefault(rel, []).append(t)
        for method in ("same_process", "child_process", "size_and_time"):
            cands = by_method.get(method)
            if not cands:
                continue
            best = self._best(cands, flow.bytes_out)
            if best is not None:
                return Match(best[0], method, best[1])
        return None

    def _best(self, cands: list[Touch], flow_bytes: int) -> tuple[tuple[Touch, ...], int] | None:
        options: list[tuple[tuple[Touch, ...], int]] = []
        per_sha: dict[str, Touch] = {}
        for t in cands:
            per_sha.setdefault(t.sha, t)
            options.append(((t,), t.size))
        if len(per_sha) > 1:
            options.append((tuple(per_sha.values()), sum(t.size for t in per_sha.values())))
        good = [o for o in options if self.comparable(o[1], flow_bytes)]
        if not good:
            return None
        chosen = min(good, key=lambda o: (abs(flow_bytes - o[1]), -o[0][-1].event.time.timestamp()))
        # every touch of the chosen artefacts is part of the story (read, then copied...)
        shas = {t.sha for t in chosen[0]}
        return tuple(t for t in cands if t.sha in shas), chosen[1]

    # --- lineage -------------------------------------------------------------------
    def lineage(self, shas: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        return self.memory.lineage(shas)

    # --- building findings ---------------------------------------------------------
    def _exfil_finding(self, flow: Flow, match: Match, flow_key: str | None) -> Finding | None:
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
        rule = _choose_rule([x for x in about_flow if is_alerting(x[1])])
        if rule is None:
            return None
        self._matched_flows[flow.uid] = match.method
        self._matched_flows.move_to_end(flow.uid)
        while len(self._matched_flows) > MAX_MATCHED_FLOWS:
            self._matched_flows.popitem(last=False)
        decisions = about_flow + [(e.uid, d) for e in files for d in e.decisions]
        dest = flow.sni or flow.name or flow.dst_ip
        touched = match.touches[-1].event
        sev, rule_id, pack, version = (
            rule.severity,
            rule.rule_id,
            rule.pack,
            rule.policy_version,
        )
        proc = flow.process or touched.process
        who = (proc.exe or "").rsplit("/", 1)[-1] if proc and proc.exe else "unknown process"
        where = f"{dest} ({flow.country or '??'}, {flow.dest_class})"
        title = (
            f"{describe(touched)} ({human(match.file_bytes)}) uploaded to {where} by {who}: "
            f"{human(flow.bytes_out)} sent"
        )
        touched_uids = {t.event.uid for t in match.touches}
        evidence = {
            "files": [
                file_doc(e, "touched" if e.uid in touched_uids else "lineage") for e in files
            ],
            "flows": [flow_doc(flow)],
            "lineage": [{"parent": p, "child": c} for p, c in edges],
            "processes": processes([flow.process, *(e.process for e in files)]),
            "decisions": [decision_doc(uid, d) for uid, d in decisions],
            "correlation": {
                "method": match.method,
                "file_bytes": match.file_bytes,
                "flow_bytes": flow.bytes_out,
                "window_seconds": int(self.window.total_seconds()),
                "tolerance_percent": round(self.tolerance * 100),
            },
            "roots": roots,
        }
        return Finding(
            kind="exfiltration",
            rule_id=rule_id,
            pack=pack,
            severity=sev,
            policy_version=version,
            title=storable_text(title) or "",
            dedup_key=dedup_key("exfiltration", rule_id, roots[0], dest),
            time=flow.end,
            bytes_out=flow.bytes_out,
            evidence=evidence,
            supersedes=tuple(sorted(supersedes)),
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
    ) -> Finding:
        rule = _choose_rule([(e.uid, d) for d in alerting])
        assert rule is not None
        roots = self.memory.roots(key)
        nodes, edges = self.lineage([key])
        lineage_events = [
            ev
            for sha in nodes
            if sha != key and (seen := self.memory.get(sha)) is not None
            for ev in seen.events
        ]
        files = [file_doc(e, "touched")] + [file_doc(ev, "lineage") for ev in lineage_events]
        title = f"{describe(e)} ({human(size_of(e))}) {what}: {rule.rule_id}"
        return Finding(
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
                "lineage": [{"parent": p, "child": c} for p, c in edges],
                "processes": processes([e.process]),
                "decisions": [decision_doc(e.uid, d) for d in e.decisions],
                "correlation": {"method": "decision", "channel": str(e.channel)},
                "roots": roots,
            },
        )

    def _copy_finding(self, e: FileEvent, key: str, kind: str, alerting: list[Decision]) -> Finding:
        where = "removable media" if kind == "removable_copy" else "a cloud-sync folder"
        return self._file_finding(e, key, kind, alerting, f"copied to {where}")

    def _alert_finding(self, e: FileEvent, key: str, alerting: list[Decision]) -> Finding:
        return self._file_finding(e, key, "policy_alert", alerting, f"{e.action} on {e.channel}")

    def _flow_alert_finding(self, f: Flow, alerting: list[Decision]) -> Finding:
        rule = _choose_rule([(f.uid, d) for d in alerting])
        assert rule is not None
        dest = f.sni or f.name or f.dst_ip
        where = f"{dest} ({f.country or '??'}, {f.dest_class})"
        title = f"{human(f.bytes_out)} sent to {where}: {rule.rule_id}"
        return Finding(
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
                "correlation": {"method": "decision", "channel": "network"},
                "roots": [],
            },
        )


def _choose_rule(decisions: Sequence[tuple[str, Decision]]) -> Decision | None:
    """The decision an incident is named after: alerting first, then the most severe."""
    if not decisions:
        return None
    return max(
        (d for _uid, d in decisions),
        key=lambda d: (is_alerting(d), d.severity.rank),
    )
