"""Repository push stories: a `git push` that policy alerts on, named after the repository.

The policy stage has already tied the flow of a git process to the repository it works
in (`Flow.repository`: remote, push URL, branch, commit, tracked files, languages) and a
pack rule decided (rd-assets' `rd-assets-repository-push*`). This module only tells the
story: one `repository_push` finding per (rule, repository, destination), with the
kinds and categories of the repository's files that the agent has seen — kept
incrementally from the tagged file events of that repository, never by re-reading it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.events import Decision, FileEvent, Flow, MatchMethod
from agent.incidents.evidence import decision_doc, evidence_of, flow_doc, human, processes
from agent.incidents.model import IncidentFinding
from agent.store.rows import storable_text

MAX_REPOSITORIES = 1_000  # repositories whose file kinds and categories are remembered


def is_push(flow: Flow) -> bool:
    return bool(flow.repository) and (flow.repository or {}).get("direction") == "push"


def root_of(event: FileEvent) -> str | None:
    """The repository a tagged file belongs to (its working tree or git directory)."""
    a = event.artefact
    if a is None:
        return None
    for t in a.tags:
        root = t.details.get("git_root") if t.kind == "source_code" else None
        root = root or (t.details.get("root") if t.kind == "repository" else None)
        if isinstance(root, str) and root:
            return root
    return None


@dataclass
class Seen:
    kinds: Counter[str] = field(default_factory=Counter)
    categories: set[str] = field(default_factory=set)


class RepositoryMemory:
    """Kinds and categories of each repository's files, as their events went by."""

    def __init__(self, limit: int = MAX_REPOSITORIES) -> None:
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._limit = limit

    def note(self, event: FileEvent) -> None:
        root = root_of(event)
        if root is None or event.artefact is None:
            return
        seen = self._seen.get(root)
        if seen is None:
            seen = self._seen[root] = Seen()
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)
        self._seen.move_to_end(root)
        for kind in event.artefact.kinds:
            if kind != "repository":
                seen.kinds[kind] += 1
        seen.categories.update(m.category for m in event.artefact.matches)

    def get(self, root: str) -> Seen | None:
        return self._seen.get(root)


def push_title(repo: Mapping[str, Any], flow: Flow, seen: Seen | None) -> str:
    """ "repository R (remote, commit, languages, categories) pushed to host H (country)"."""
    parts = [str(repo.get("push_url") or repo.get("remote") or "no remote")]
    if repo.get("commit"):
        parts.append(f"commit {str(repo['commit'])[:12]}")
    if repo.get("files_count") is not None:
        parts.append(f"{repo['files_count']} files")
    if repo.get("languages"):
        parts.append("/".join(map(str, repo["languages"][:3])))
    if seen is not None and seen.categories:
        parts.append("categories " + ",".join(sorted(seen.categories)[:5]))
    dest = flow.sni or flow.name or flow.dst_ip
    who = (flow.process.exe or "").rsplit("/", 1)[-1] if flow.process else ""
    return (
        f"repository {repo.get('name') or repo.get('root')} ({', '.join(parts)}) pushed to "
        f"{dest} ({flow.country or '??'}, {flow.dest_class}) by {who or 'unknown process'}: "
        f"{human(flow.bytes_out)} sent"
    )


def push_finding(flow: Flow, rule: Decision, memory: RepositoryMemory, key: str) -> IncidentFinding:
    """The push story of `flow`, named after the alerting decision `rule`."""
    repo = dict(flow.repository or {})
    seen = memory.get(str(repo.get("root") or ""))
    repo_doc = {k: storable_text(v) if isinstance(v, str) else v for k, v in repo.items()}
    if seen is not None:
        repo_doc["seen_kinds"] = dict(seen.kinds)
        repo_doc["seen_categories"] = sorted(seen.categories)
    evidence = evidence_of(
        {
            "method": str(MatchMethod.REPOSITORY),
            "direction": repo.get("direction"),
            "bytes_out": flow.bytes_out,
            "bytes_in": flow.bytes_in,
        },
        flows=[flow_doc(flow)],
        procs=processes([flow.process]),
        decisions=[decision_doc(flow.uid, d) for d in flow.decisions],
        repository=repo_doc,
    )
    title = push_title(repo, flow, seen)
    return IncidentFinding.named_after(
        rule, "repository_push", title, key, flow.end, evidence, flow.bytes_out
    )
