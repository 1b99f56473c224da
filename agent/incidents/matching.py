"""Matching: which recent touches of tagged files an outbound flow carried (pure, no I/O).

The first half of correlation (correlate.py orchestrates, findings.py tells the story).
It keeps the correlation window: the "touches" (a process read, copied, archived or
wrote a tagged artefact) and the outbound flows to external destinations seen within
`incidents.correlation_window`, both in event time. A flow matches the touches of the
same process (`same_process`), of an ancestor of it (`child_process`: the reader spawned
the uploader), or — only while no file event was ever attributed to a process — any
touch of at least `MIN_UNATTRIBUTED_BYTES` (`size_and_time`); the bytes sent must be
comparable to the artefact's size (`incidents.byte_tolerance`, relative). One artefact
or all the distinct artefacts together, whichever is closer in size, is the match.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.events import FileEvent, Flow, MatchMethod
from agent.incidents.ancestry import Ancestry

MIN_UNATTRIBUTED_BYTES = 64 * 1024
# events from different sensors carry clocks read at different moments
CLOCK_SKEW = timedelta(seconds=5)
METHOD_ORDER = (MatchMethod.SAME_PROCESS, MatchMethod.CHILD_PROCESS, MatchMethod.SIZE_AND_TIME)


@dataclass(frozen=True, slots=True)
class Touch:
    """A tagged artefact read, copied, archived or written by a process."""

    event: FileEvent
    sha: str  # the artefact's sha256, or "path:<path>" when it has none
    size: int

    @property
    def pid(self) -> int | None:
        return self.event.process.pid if self.event.process else None


@dataclass(frozen=True, slots=True)
class Match:
    """The touches a flow carried, how they relate to its process, and their bytes."""

    touches: tuple[Touch, ...]
    method: MatchMethod
    file_bytes: int


class TouchWindow:
    """Recent touches and outbound flows, expired by event time, and the matching on them."""

    def __init__(self, window: timedelta, tolerance: float, ancestry: Ancestry) -> None:
        self.window = window
        self.tolerance = tolerance
        self.ancestry = ancestry
        self._touches: deque[Touch] = deque()  # in time order, for expiry
        self._by_pid: dict[int | None, deque[Touch]] = {}  # the same touches by process
        self._flows: deque[tuple[Flow, str | None]] = deque()  # (flow, its policy-alert key)
        # once one file event names its process, unattributed touches no longer match
        # attributed flows: the sensor could have named the uploader and did not
        self.file_attribution = False

    def expire(self, now: datetime) -> None:
        """Forget touches and flows that fell out of the window before `now`."""
        horizon = now - self.window - CLOCK_SKEW
        while self._touches and self._touches[0].event.time < horizon:
            old = self._touches.popleft()
            mine = self._by_pid.get(old.pid)
            if mine:
                mine.popleft()  # touches enter both queues in the same order
                if not mine:
                    del self._by_pid[old.pid]
        while self._flows and self._flows[0][0].end < horizon:
            self._flows.popleft()

    def add_touch(self, touch: Touch) -> None:
        self._touches.append(touch)
        self._by_pid.setdefault(touch.pid, deque()).append(touch)

    def add_flow(self, flow: Flow, alert_key: str | None) -> None:
        """Keep `flow` for touches that arrive after it (sensors deliver in no fixed order)."""
        self._flows.append((flow, alert_key))

    def flows(self) -> list[tuple[Flow, str | None]]:
        return list(self._flows)

    def candidates(self, flow: Flow) -> list[Touch]:
        """Touches that could belong to `flow`: by its process and ancestors, or unattributed."""
        fpid = flow.process.pid if flow.process else None
        if fpid is None:
            return list(self._touches)
        out: list[Touch] = []
        for pid in (fpid, *self.ancestry.ancestors(fpid)):
            out.extend(self._by_pid.get(pid, ()))
        if not self.file_attribution:
            out.extend(self._by_pid.get(None, ()))
        return out

    def relation(self, touch: Touch, flow: Flow) -> MatchMethod | None:
        fpid = flow.process.pid if flow.process else None
        if fpid is None:
            return MatchMethod.SIZE_AND_TIME
        if touch.pid is None:
            return None if self.file_attribution else MatchMethod.SIZE_AND_TIME
        if touch.pid == fpid:
            return MatchMethod.SAME_PROCESS
        if touch.pid in self.ancestry.ancestors(fpid):
            return MatchMethod.CHILD_PROCESS
        return None

    def comparable(self, file_bytes: int, flow_bytes: int) -> bool:
        if file_bytes <= 0 or flow_bytes <= 0:
            return False
        return abs(flow_bytes - file_bytes) <= self.tolerance * file_bytes

    def match(self, flow: Flow, touches: Iterable[Touch]) -> Match | None:
        """The closest match of `flow` among `touches`, by the closest relation first."""
        lo = flow.start - self.window
        hi = flow.end + CLOCK_SKEW
        by_method: dict[MatchMethod, list[Touch]] = {}
        for t in touches:
            if not lo <= t.event.time <= hi:
                continue
            rel = self.relation(t, flow)
            if rel is None:
                continue
            if rel == MatchMethod.SIZE_AND_TIME and t.size < MIN_UNATTRIBUTED_BYTES:
                continue
            by_method.setdefault(rel, []).append(t)
        for method in METHOD_ORDER:
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
