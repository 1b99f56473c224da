"""Lineage: a file whose content hash is already known inherits that artefact's tags.

A copy or a rename has the same SHA-256 as the file it came from; instead of parsing it
again the classifier looks the hash up here — first in a bounded in-memory LRU of recent
results, then in the store's `artefacts` table (which also holds what other hosts'
agents found when the store is a fleet database) — and the new artefact carries the tags
with `parents=(sha256,)`. Archives get their lineage from their members' hashes in
`archives.py`; the store writer turns `Artefact.parents` into `lineage` rows.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.events import CategoryMatch, Tag

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Known:
    """A classification result as remembered for one content hash."""

    content_type: str
    tags: tuple[Tag, ...]
    matches: tuple[CategoryMatch, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()  # raw keyword counts by category code
    origin: tuple[int, int] | None = None  # (device, inode) of the file first classified
    skipped: str | None = None  # why the content was only partly read, if it was
    cut_at: str | None = None  # with skipped="timeout": the tier reached (never persisted)

    def to_doc(self) -> dict[str, Any]:
        return {
            "origin": list(self.origin) if self.origin else None,
            "skipped": self.skipped,
            "content_type": self.content_type,
            "tags": [
                {"kind": t.kind, "evidence": t.evidence, "details": t.details} for t in self.tags
            ],
            "counts": [list(c) for c in self.counts],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Known:
        tags = tuple(
            Tag(str(t["kind"]), str(t.get("evidence", "")), dict(t.get("details") or {}))
            for t in doc.get("tags", [])
            if isinstance(t, dict) and "kind" in t
        )
        counts = tuple(
            (str(c[0]), int(c[1])) for c in doc.get("counts", []) if isinstance(c, list | tuple)
        )
        origin = doc.get("origin")
        ident = (
            (int(origin[0]), int(origin[1]))
            if isinstance(origin, list) and len(origin) == 2
            else None
        )
        skipped = doc.get("skipped")
        return cls(
            str(doc.get("content_type", "unknown")),
            tags,
            (),
            counts,
            ident,
            skipped if isinstance(skipped, str) else None,
        )


class LRU:
    """A small thread-safe LRU of sha256 → Known."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._d: OrderedDict[str, Known] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha: str) -> Known | None:
        with self._lock:
            hit = self._d.get(sha)
            if hit is not None:
                self._d.move_to_end(sha)
            return hit

    def put(self, sha: str, known: Known) -> None:
        with self._lock:
            self._d[sha] = known
            self._d.move_to_end(sha)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def store_lookup(engine: Engine, sha: str) -> Known | None:
    """The store's artefact row for `sha`, if it has tags; None on any store problem."""
    from agent.store import artefacts  # SQLAlchemy only where the daemon has a store
    from agent.store.db import StoreError

    try:
        row = artefacts.lookup(engine, sha)
    except StoreError as e:
        log.debug("lineage: %s", e)
        return None
    if row is None or not row.tags:
        return None
    known = Known.from_doc({"content_type": row.content_type or "unknown", "tags": row.tags})
    found = tuple(
        CategoryMatch(
            str(m["category"]),
            int(m["count"]),
            str(m.get("pack", "")),
            int(m.get("distinct", 0)),  # 0: stored before distinct counting (judged as then)
            str(m.get("confidence", "low")),
            str(m.get("basis", "")),
        )
        for m in row.matches
        if "category" in m
    )
    return Known(known.content_type, known.tags, found, (), None)
