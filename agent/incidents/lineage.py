"""What correlation remembers of artefacts: tagged events by content hash, and lineage.

A story is told about content, not paths: the checkpoint, its renamed copy and the
member of an archive share a SHA-256. This memory keeps, for each tagged artefact, its
recent file events and the dedup keys of local policy alerts about it, and the
parent → child links the classifier found (`Artefact.parents`), asking the store's
`lineage` table for what it has not seen since start. Everything is bounded (LRU).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.events import FileEvent

MAX_LINEAGE_NODES = 64
MAX_EVENTS_PER_SHA = 8
MAX_SHAS = 20_000

ParentsOf = Callable[[str], Sequence[str]]
"""Parents of an artefact from the store (the `lineage` table)."""


@dataclass
class Seen:
    """What correlation remembers of one artefact (by content hash, or `path:` key)."""

    events: deque[FileEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_SHA))
    alert_keys: set[str] = field(default_factory=set)


class ArtefactMemory:
    def __init__(self, parents_of: ParentsOf | None = None) -> None:
        self._parents_of = parents_of
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._parents: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def get(self, key: str) -> Seen | None:
        return self._seen.get(key)

    def seen_for(self, key: str) -> Seen:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = Seen()
            while len(self._seen) > MAX_SHAS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        return seen

    def remember_parents(self, sha: str, parents: tuple[str, ...]) -> None:
        if parents:
            self._parents[sha] = parents
            while len(self._parents) > MAX_SHAS:
                self._parents.popitem(last=False)

    def parents(self, sha: str) -> tuple[str, ...]:
        known = self._parents.get(sha)
        if known is not None:
            return known
        if self._parents_of is not None and not sha.startswith("path:"):
            found = tuple(p for p in self._parents_of(sha) if p != sha)
            self._parents[sha] = found  # "no parents" is remembered too: one query per hash
            while len(self._parents) > MAX_SHAS:
                self._parents.popitem(last=False)
            return found
        return ()

    def lineage(self, shas: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """(every artefact in the family, parent->child edges), walking up from `shas`."""
        nodes: list[str] = []
        edges: list[tuple[str, str]] = []
        todo = list(dict.fromkeys(shas))
        while todo and len(nodes) < MAX_LINEAGE_NODES:
            sha = todo.pop(0)
            if sha in nodes:
                continue
            nodes.append(sha)
            for p in self.parents(sha):
                edges.append((p, sha))
                if p not in nodes:
                    todo.append(p)
        return nodes, edges

    def roots(self, sha: str) -> list[str]:
        nodes, edges = self.lineage([sha])
        children = {c for _p, c in edges}
        return sorted(n for n in nodes if n not in children) or [sha]
