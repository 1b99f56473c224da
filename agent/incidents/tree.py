"""Whole-tree copies: `cp -r` of a project onto a USB stick is one story, not 500.

Copies onto removable media, a cloud-sync folder or a network share are gathered per
copy operation — the same channel and process, files arriving with gaps shorter than
`TREE_IDLE` — into a `TreeCopy`. When the copy has gone quiet (or the agent stops) a
tree of at least `MIN_TREE_FILES` files is judged once by policy as `event: tree`
(`files_count`, `size`, the union of `kinds` and `categories`, `repository.*` when the
tree carries a git repository) and, when a rule alerts, becomes one `tree_copy` finding
that lists its files and supersedes the per-file copy incidents of the same files.
Time is the events' own; the service also closes trees on its wall clock.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent.events import (
    Artefact,
    Channel,
    Decision,
    FileAction,
    FileEvent,
    MatchMethod,
    ProcessInfo,
)
from agent.incidents.evidence import (
    decision_doc,
    evidence_of,
    file_doc,
    human,
    processes,
    size_of,
)
from agent.incidents.model import IncidentFinding
from agent.store.rows import storable_text

TREE_IDLE = timedelta(seconds=20)  # a copy that wrote nothing for this long is complete
MIN_TREE_FILES = 2  # below this a copy is a file, judged by the file rules
MAX_TREE_FILES = 20_000  # files remembered per copy; more are counted, not listed
MAX_OPEN_TREES = 256
MAX_HELD_FILES = 100_000  # files remembered over all open copies (memory bound)
TREE_CHANNELS = {
    Channel.REMOVABLE: "removable media",
    Channel.CLOUD_SYNC: "a cloud-sync folder",
    Channel.NETWORK_SHARE: "a network share",
}
TREE_ACTIONS = frozenset({FileAction.CREATED, FileAction.WRITTEN, FileAction.MOVED})


@dataclass
class TreeCopy:
    """One copy operation in progress: its files by destination path."""

    channel: Channel
    pid: int | None
    first: datetime
    last: datetime
    files: dict[str, FileEvent] = field(default_factory=dict)
    more: int = 0  # files past MAX_TREE_FILES
    git_files: int = 0  # files under its .git/: part of the repository, not listed
    repository: dict[str, Any] | None = None  # from the newest complete repository tag
    alert_keys: set[str] = field(default_factory=set)  # per-file copy incidents it absorbs

    @property
    def files_count(self) -> int:
        return len(self.files) + self.more

    @property
    def root(self) -> str:
        dirs = {os.path.dirname(p) for p in self.files}
        try:
            return os.path.commonpath(list(dirs)) if dirs else ""
        except ValueError:  # mixed absolute and relative paths
            return ""

    @property
    def size(self) -> int:
        return sum(size_of(e) for e in self.files.values())

    @property
    def process(self) -> ProcessInfo | None:
        return next((e.process for e in self.files.values() if e.process), None)

    def artefacts(self) -> list[Artefact]:
        return [e.artefact for e in self.files.values() if e.artefact is not None]


@dataclass(frozen=True, slots=True)
class TreeFacts:
    """What policy is asked about a finished copy (facts.tree_facts builds the mapping)."""

    channel: str
    root: str
    files_count: int
    size: int
    artefacts: tuple[Artefact, ...]
    repository: dict[str, Any] | None
    process: ProcessInfo | None
    time: datetime


JudgeTree = Callable[[TreeFacts], Sequence[Decision]]


class TreeCopies:
    """The copies in progress, keyed by (channel, process)."""

    def __init__(self, idle: timedelta = TREE_IDLE) -> None:
        self.idle = idle
        self._open: dict[tuple[Channel, int | None], TreeCopy] = {}
        self._held = 0  # files remembered in all open copies

    def note(self, e: FileEvent) -> TreeCopy | None:
        """Count `e` into its copy when it is a file arriving on a leaving channel."""
        if e.channel not in TREE_CHANNELS or e.action not in TREE_ACTIONS:
            return None
        key = (e.channel, e.process.pid if e.process else None)
        tree = self._open.get(key)
        if tree is None:
            if len(self._open) >= MAX_OPEN_TREES:
                return None
            tree = self._open[key] = TreeCopy(e.channel, key[1], e.time, e.time)
        tree.last = max(tree.last, e.time)
        a = e.artefact
        if a is not None and a.kinds == ("repository",):
            tree.git_files += 1
            details = a.tags[0].details
            if details.get("commit"):
                keep = ("name", "root", "remote", "remote_host", "branch", "commit", "languages")
                tree.repository = {k: details[k] for k in keep if details.get(k) is not None}
            return tree
        path = e.current_path
        if path in tree.files:
            tree.files[path] = e
        elif len(tree.files) < MAX_TREE_FILES and self._held < MAX_HELD_FILES:
            tree.files[path] = e
            self._held += 1
        else:
            tree.more += 1
        return tree

    def __len__(self) -> int:
        """Open copies: while there are any, the correlator wakes to close quiet ones."""
        return len(self._open)

    def due(self, now: datetime | None, final: bool = False) -> list[TreeCopy]:
        """Copies that have gone quiet by `now` (all of them when `final`), removed."""
        out = []
        for key, tree in list(self._open.items()):
            if final or (now is not None and now - tree.last > self.idle):
                out.append(tree)
                del self._open[key]
                self._held -= len(tree.files)
        return out


def repository_doc(tree: TreeCopy) -> dict[str, Any] | None:
    """The repository the tree carries, from its files' tags (no file is read here)."""
    if tree.repository:
        return {**tree.repository, "git_files": tree.git_files}
    fallback: dict[str, Any] | None = None
    for e in tree.files.values():
        for t in e.artefact.tags if e.artefact else ():
            if t.kind == "source_code" and t.details.get("git_root") and fallback is None:
                fallback = {
                    "root": t.details.get("git_root"),
                    "remote": t.details.get("git_remote"),
                    "commit": t.details.get("git_commit"),
                }
    return {k: v for k, v in fallback.items() if v is not None} if fallback else None


def facts_of(tree: TreeCopy) -> TreeFacts:
    return TreeFacts(
        channel=str(tree.channel),
        root=tree.root,
        files_count=tree.files_count,
        size=tree.size,
        artefacts=tuple(tree.artefacts()),
        repository=repository_doc(tree),
        process=tree.process,
        time=tree.last,
    )


def tree_finding(
    tree: TreeCopy, facts: TreeFacts, decisions: Sequence[Decision], rule: Decision, key: str
) -> IncidentFinding:
    kinds: Counter[str] = Counter()
    for a in facts.artefacts:
        kinds.update(a.kinds)
    repo = facts.repository
    what = f"{facts.files_count} files, {human(facts.size)}"
    if kinds:
        what += ", " + ", ".join(f"{k} {n}" for k, n in kinds.most_common(4))
    if repo:
        where = repo.get("remote") or repo.get("root")
        what += f", repository {where}"
        if repo.get("commit"):
            what += f" at {str(repo['commit'])[:12]}"
    proc = facts.process
    who = (proc.exe or "").rsplit("/", 1)[-1] if proc and proc.exe else "unknown process"
    title = (
        f"tree {os.path.basename(facts.root) or facts.root} ({what}) copied to "
        f"{TREE_CHANNELS[tree.channel]} at {facts.root} by {who}: {rule.rule_id}"
    )
    events = sorted(tree.files.values(), key=lambda e: e.time)
    paths = [storable_text(e.current_path) for e in events]
    evidence = evidence_of(
        {
            "method": str(MatchMethod.TREE),
            "channel": str(tree.channel),
            "files": facts.files_count,
            "idle_seconds": int(TREE_IDLE.total_seconds()),
        },
        files=[file_doc(e, "copied") for e in events],
        procs=processes([proc]),
        decisions=[decision_doc(f"tree:{key[:16]}", d) for d in decisions],
        tree={
            "root": storable_text(facts.root),
            "files_count": facts.files_count,
            "bytes": facts.size,
            "kinds": dict(kinds),
            "repository": repo,
            "paths": paths,
            "paths_not_listed": tree.more,
            "git_files": tree.git_files,
            "first": tree.first.isoformat(),
            "last": tree.last.isoformat(),
        },
    )
    return IncidentFinding.named_after(
        rule, "tree_copy", title, key, tree.last, evidence, supersedes=tree.alert_keys
    )
