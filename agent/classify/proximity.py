"""The proximity window: which primary hits count and what evidence lies near them.

A category's raw hits in one text (positions in the folded text) are reduced here, as
a DLP content rule reduces a primary element and its supporting elements: overlapping
keywords of one phrase count once (leftmost-longest), a hit with an `excludes` term
within the window does not count, and corroboration is the number of different pieces
of evidence within the window of a kept hit. Pure and bounded (`MAX_PRIMARY_CHECKED`,
`MAX_STEPS`), kept apart from `keywords`, which builds the automaton and finds the hits.
"""

from __future__ import annotations

import bisect

from agent.classify import corroboration as corr

MAX_PRIMARY_CHECKED = 2_000  # primary hits per category and text looked at for corroboration
MAX_STEPS = 200_000  # evidence positions visited per category and text (time bound)


def leftmost_longest(hits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping hits, the longest at each start: one phrase is one occurrence."""
    hits.sort(key=lambda h: (h[0], -h[1]))
    kept: list[tuple[int, int, str]] = []
    end = -1
    for h in hits:
        if h[0] >= end:
            kept.append(h)
            end = h[1]
    return kept


def exclude(
    hits: list[tuple[int, int, str]], excludes: list[int], window: int
) -> list[tuple[int, int, str]]:
    """The hits without an `excludes` term (sorted start positions) within `window`."""
    if not excludes:
        return hits
    out = []
    for start, end, term in hits:
        j = bisect.bisect_left(excludes, start - window)
        if j < len(excludes) and excludes[j] <= end + window:
            continue
        out.append((start, end, term))
    return out


def generic(folded: str, norm: str, equipment: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The evidence of no category in particular (units, markers, equipment), sorted."""
    found = list(corr.with_units(folded))
    found.extend(corr.markers(folded, norm))
    found.extend(equipment)
    found.sort()
    return found


def corroboration(
    kept: list[tuple[int, int, str]], evidence: list[tuple[int, str]], window: int
) -> int:
    """Different pieces of evidence within `window` of a primary hit (not inside one)."""
    if not evidence:
        return 0
    evidence.sort()
    positions = [p for p, _ in evidence]
    starts = {s for s, _, _ in kept}
    seen: set[str] = set()
    steps = 0
    for start, end, _ in kept[:MAX_PRIMARY_CHECKED]:
        j = bisect.bisect_left(positions, start - window)
        while j < len(positions) and positions[j] <= end + window and steps < MAX_STEPS:
            steps += 1
            pos, what = evidence[j]
            if pos not in starts and not start <= pos < end:
                seen.add(what)
            j += 1
            if len(seen) >= 16:
                return len(seen)
    return len(seen)
