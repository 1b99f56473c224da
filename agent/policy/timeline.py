"""The legal life of a control: which state it was in on a given day, and why.

Export controls are switched on, suspended and left unenforced by dated announcements;
an officer reading a decision needs to know which of those applied on the day the file
left, not today. A control is a start day (`effective_from`) plus a short timeline of
periods; the state on a day is one of:

- `not_yet_in_force` — before the control began (the Catalogue's 2025 lithium points
  before 2025-07-15): nothing to break yet;
- `in_force`;
- `suspended` — a suspension announcement covers the day; its `until` day is included
  ("until and including 2026-11-10", MOFCOM Ann. 2025 No. 70);
- `not_enforced` — announced as not enforced but not formally removed (US 4E091 since
  2025-05-13);
- `repealed`.

A day after a period that ended, with no later period given, falls back to `in_force`
but is marked unverified: nobody has read what happened next. Pure functions only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

IN_FORCE = "in_force"
NOT_YET = "not_yet_in_force"
SUSPENDED = "suspended"
NOT_ENFORCED = "not_enforced"
REPEALED = "repealed"


@dataclass(frozen=True, slots=True)
class Period:
    """One stretch of a control's life; `until` is the last day it holds (inclusive)."""

    start: dt.date
    state: str
    until: dt.date | None = None
    ref: str = ""
    verified: bool = True
    note: str = ""


@dataclass(frozen=True, slots=True)
class ControlState:
    """The state of a control on one day, with the period that put it there."""

    state: str
    since: dt.date | None = None
    until: dt.date | None = None
    ref: str = ""
    verified: bool = True
    note: str = ""

    @property
    def in_force(self) -> bool:
        return self.state == IN_FORCE

    def describe(self) -> str:
        """One line an officer reads: 'suspended 2025-11-08 to 2026-11-10 (Ann. 70)'."""
        if self.state == NOT_YET:
            text = f"not yet in force (from {self.until})" if self.until else "not yet in force"
        elif self.state == SUSPENDED:
            span = (
                f" {self.since} to {self.until} inclusive" if self.until else f" since {self.since}"
            )
            text = "suspended" + (span if self.since else "")
        elif self.state == NOT_ENFORCED:
            text = f"not enforced since {self.since}" if self.since else "not enforced"
        elif self.state == REPEALED:
            text = f"repealed since {self.since}" if self.since else "repealed"
        else:
            text = f"in force since {self.since}" if self.since else "in force"
        if self.ref:
            text += f" ({self.ref})"
        if not self.verified:
            text += " [unverified" + (f": {self.note}" if self.note else "") + "]"
        return text


def periods_from_status(status: str, start: dt.date | None, ref: str = "") -> tuple[Period, ...]:
    """The old one-word `status:` as periods (kept for site packs and overrides).

    `suspended_until:D` is read like the announcements it copies: D is the last
    suspended day.
    """
    begin = start or dt.date.min
    if status == "rescinded_nonenforced":
        return (Period(begin, NOT_ENFORCED, ref=ref),)
    if status.startswith("suspended_until:"):
        until = dt.date.fromisoformat(status.partition(":")[2])
        return (Period(begin, SUSPENDED, until=until, ref=ref),)
    if status == IN_FORCE and start is None:
        return ()
    return (Period(begin, IN_FORCE, ref=ref),) if status == IN_FORCE else ()


def state_on(
    day: dt.date, effective_from: dt.date | None, periods: tuple[Period, ...], ref: str = ""
) -> ControlState:
    """The control's state on `day`; `ref` names the law when no period gives one."""
    if effective_from is not None and day < effective_from:
        return ControlState(NOT_YET, until=effective_from, ref=ref)
    current: Period | None = None
    for p in periods:
        if p.start <= day:
            current = p
    if current is None:
        return ControlState(IN_FORCE, since=effective_from, ref=ref)
    if current.until is not None and day > current.until:
        # past the end of the last period known: assume the control is back, but say
        # that no source was read for it
        return ControlState(
            IN_FORCE,
            since=current.until + dt.timedelta(days=1),
            ref=ref,
            verified=False,
            note=f"after the {current.state.replace('_', ' ')} period ended on {current.until}",
        )
    return ControlState(
        current.state,
        current.start,
        current.until,
        current.ref or ref,
        current.verified,
        current.note,
    )


def strongest(states: Iterable[ControlState]) -> ControlState | None:
    """Of several controls that made one decision, the one that applies most.

    In force beats everything (one control in force is enough for an alert); then a
    suspension (a control that exists), then not enforced, not yet in force, repealed.
    """
    order = {IN_FORCE: 0, SUSPENDED: 1, NOT_ENFORCED: 2, NOT_YET: 3, REPEALED: 4}
    best: ControlState | None = None
    for s in states:
        if best is None or order.get(s.state, 9) < order.get(best.state, 9):
            best = s
    return best
