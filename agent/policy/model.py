"""The compiled policy in force: packs, categories, rules, and the decision function.

`Policy` is immutable and built only by `build.build_policy` (behind
`build.load_policy`, which reads the pack files); the holder swaps whole policies.
`Policy.decide(facts)` is pure — it tries only the rules that can still hold once the
event's kind, action, channel, kinds and categories are known (a plan made once per
combination, agent/policy/plans.py), checks what is left of each rule's condition and
its exceptions (data: destination networks and host globs, users, processes, paths;
agent/policy/rule_exceptions.py), and turns a firing rule into a `Decision` carrying the
rule, pack, severity, action, the policy version and the categories that made it fire. A
rule whose legal control is not in force on the day of the event (not yet in force,
suspended, not enforced) still decides, but only records; the decision names the regime,
the law, the item code, the control's state on that day and the confidence of the
categories behind it, which is what an officer acts on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.categories import CategorySpec
from agent.events import Action, Artefact, Decision, FileEvent, Flow, Severity
from agent.policy import facts as facts_mod
from agent.policy.conditions import All, Compare, Condition, event_kinds
from agent.policy.plans import MAX_PLANS, Plan, build_plan, plan_key
from agent.policy.rule_exceptions import RuleException
from agent.policy.timeline import ControlState, Period, periods_from_status, state_on, strongest


@dataclass(frozen=True, slots=True)
class Source:
    title: str
    ref: str | None = None
    url: str | None = None
    date: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class PackInfo:
    id: str
    name: str
    regime: str
    version: str
    file: str
    sha256: str
    origin: str  # "shipped" | "site"
    enabled: bool = True
    replaced_by: str | None = None  # the site file that took this pack id's place
    rules: int = 0
    categories: int = 0
    sources: tuple[Source, ...] = ()
    timezone: str = "UTC"  # the calendar of the regime's legal dates


@dataclass(frozen=True, slots=True)
class RuleCase:
    name: str
    facts: Mapping[str, Any]
    expect: str  # "decision" | "none"
    severity: Severity | None = None
    action: Action | None = None
    line: int = 0
    date: dt.date | None = None
    state: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    pack: str
    description: str
    condition: Condition
    severity: Severity
    action: Action
    tags: tuple[str, ...] = ()
    exceptions: tuple[RuleException, ...] = ()
    status: str = "in_force"  # the old one-word status; `timeline` wins when given
    effective_from: dt.date | None = None
    categories: frozenset[str] = frozenset()  # codes the condition refers to
    enabled: bool = True
    tests: tuple[RuleCase, ...] = ()
    file: str = ""
    line: int = 0
    timeline: tuple[Period, ...] = ()
    legal_ref: str = ""  # the law or announcement the rule rests on
    item: str = ""  # the item code when the rule names no category (e.g. "4E091")
    site_status: bool = False  # a site override set the status: the categories' dates yield

    def control_state(self, day: dt.date) -> ControlState:
        """The state of the control behind this rule on `day`."""
        periods = self.timeline or periods_from_status(self.status, self.effective_from)
        return state_on(day, self.effective_from, periods, self.legal_ref)

    def in_force(self, day: dt.date) -> tuple[bool, str]:
        """Whether the control behind this rule applies on `day`, and why not."""
        state = self.control_state(day)
        return state.in_force, "" if state.in_force else state.describe()

    @property
    def events(self) -> frozenset[str] | None:
        return event_kinds(self.condition)

    def fires(self, facts: Mapping[str, Any]) -> bool:
        if not self.condition(facts):
            return False
        return not any(e.matches(facts) for e in self.exceptions)


@dataclass(frozen=True, slots=True)
class Policy:
    version: str  # sha256 over the enabled packs' content and the site parameters
    packs: tuple[PackInfo, ...]
    rules: tuple[Rule, ...]
    categories: tuple[CategorySpec, ...]
    loaded_at: float = 0.0
    category_info: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    min_counts: Mapping[str, int] = field(init=False, repr=False, compare=False)
    min_confidence: Mapping[str, str] = field(init=False, repr=False, compare=False)
    regimes: Mapping[str, str] = field(init=False, repr=False, compare=False)
    zones: Mapping[str, ZoneInfo] = field(init=False, repr=False, compare=False)
    _by_event: Mapping[str, tuple[Rule, ...]] = field(init=False, repr=False, compare=False)
    _gated: Mapping[str, Gated] = field(init=False, repr=False, compare=False)
    # plan key (agent/policy/plans.py) -> the rules left to try: filled as events come
    _plans: dict[Hashable, Plan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_counts", {c.code: c.min_count for c in self.categories})
        object.__setattr__(
            self, "min_confidence", {c.code: c.min_confidence for c in self.categories}
        )
        object.__setattr__(self, "regimes", {p.id: p.regime for p in self.packs if p.enabled})
        zones = {p.id: _zone(p.timezone) for p in self.packs if p.enabled}
        object.__setattr__(self, "zones", {k: z for k, z in zones.items() if z is not None})
        # rules that can only hold for some kinds of event are not tried on the others
        by_event: dict[str, tuple[Rule, ...]] = {}
        for kind in ("file", "flow", "transfer"):
            by_event[kind] = tuple(
                r for r in self.rules if r.enabled and (r.events is None or kind in r.events)
            )
        object.__setattr__(self, "_by_event", by_event)
        object.__setattr__(self, "_gated", {k: _gates(rules) for k, rules in by_event.items()})
        object.__setattr__(self, "_plans", {})

    def decide(
        self,
        facts: Mapping[str, Any],
        day: dt.date | None = None,
        when: dt.datetime | None = None,
    ) -> list[Decision]:
        """Every decision the enabled rules make on these facts, in rule order.

        `when` (an aware time) is judged on its day in each pack's legal calendar; without
        it, every rule is judged on `day` (default today).
        """
        day = day or (when.date() if when is not None else dt.date.today())
        plan = self._plan(facts)
        if plan is not None:
            out = []
            for rule, left in plan:
                if (left is None or left(facts)) and not any(
                    e.matches(facts) for e in rule.exceptions
                ):
                    out.append(self._decision(rule, facts, self._day(rule.pack, day, when)))
            return out
        # facts whose plan fields cannot key a plan (an unhashable value): rule by rule
        gated = self._gated.get(facts.get("event"))  # type: ignore[arg-type]
        if gated is None:
            gated = _gates(tuple(r for r in self.rules if r.enabled))
        # a comparison that several rules require (event is file, kinds contain weights)
        # is made once per event: most rules fail on one, so this is most of the work
        seen: dict[Hashable, bool] = {}
        out = []
        for rule, gates in gated:
            for key, compare in gates:
                ok = seen.get(key)
                if ok is None:
                    ok = seen[key] = compare(facts)
                if not ok:
                    break
            else:
                if rule.fires(facts):
                    out.append(self._decision(rule, facts, self._day(rule.pack, day, when)))
        return out

    def _plan(self, facts: Mapping[str, Any]) -> Plan | None:
        """The rules left to try on these facts (agent/policy/plans.py), built on the first
        event of each combination of the plan fields; None when they cannot be a key."""
        key = plan_key(facts)
        plans = self._plans
        try:
            plan = plans.get(key)
        except TypeError:  # an unhashable value
            return None
        if plan is None:
            rules = self._by_event.get(key[0])  # type: ignore[call-overload]
            if rules is None:
                rules = tuple(r for r in self.rules if r.enabled)
            if len(plans) >= MAX_PLANS:
                plans.clear()
            plan = plans[key] = build_plan(rules, key)
        return plan

    def _day(self, pack: str, day: dt.date, when: dt.datetime | None) -> dt.date:
        zone = self.zones.get(pack)
        if when is None or when.tzinfo is None or zone is None:
            return day
        return when.astimezone(zone).date()

    def _decision(self, rule: Rule, facts: Mapping[str, Any], day: dt.date) -> Decision:
        present = facts.get("categories") or frozenset()
        # helper categories (control: indicator) give context; the decision names entries
        cats = tuple(
            sorted(
                c
                for c in rule.categories & present
                if self.category_info.get(c, {}).get("control") != "indicator"
            )
        )
        state = self.rule_state(rule, day, cats)
        refs = [rule.legal_ref] if rule.legal_ref else []
        if state.ref and state.ref not in refs:
            refs.append(state.ref)
        action = rule.action if state.in_force else Action.RECORD
        reason = rule.description
        if cats:
            reason = f"{reason} [{'; '.join(self._describe(c, facts) for c in cats)}]"
        if not state.in_force:
            reason = f"{reason} ({state.describe()}: recorded only)"
        elif not state.verified:
            reason = f"{reason} ({state.describe()})"
        items = [self.item(c) for c in cats] or ([rule.item] if rule.item else [])
        return Decision(
            rule_id=rule.id,
            pack=rule.pack,
            severity=rule.severity,
            action=action,
            policy_version=self.version,
            reason=reason,
            categories=cats,
            regime="; ".join(self._regimes(cats)) or self.regimes.get(rule.pack, ""),
            legal_ref="; ".join(refs),
            item="; ".join(dict.fromkeys(items)),
            in_force=state.in_force,
            control_state=state.state if state.verified else f"{state.state} (unverified)",
            confidence=highest_confidence(facts.get(f"confidence.{c}") for c in cats),
        )

    def rule_state(
        self, rule: Rule, day: dt.date, cats: tuple[str, ...] | None = None
    ) -> ControlState:
        """The state on `day` of the controls behind a rule firing on `cats` (default: all
        the categories it names)."""
        state = rule.control_state(day)
        if not state.in_force or rule.site_status:
            return state
        # the rule's control applies; each category may be a control of its own with its
        # own dates (1E902 and 3E901 under one rule)
        codes = sorted(rule.categories) if cats is None else cats
        if not any(self._dated(c) for c in codes):
            return state
        # an undated category is under the rule's own control, in force today
        best = strongest(self.category_state(c, day) if self._dated(c) else state for c in codes)
        # a category out of force narrows the rule; one in force adds nothing to a rule
        # with a timeline of its own (or, listing the rule, to the rule's own dates)
        # unless it is the less certain of the two
        mine = bool(rule.timeline) or cats is None
        if best is not None and not (best.in_force and best.verified and mine):
            return best
        return state

    def _regimes(self, cats: tuple[str, ...]) -> list[str]:
        found = (self.category_info.get(c, {}).get("regime") for c in cats)
        return list(dict.fromkeys(str(r) for r in found if r))

    def _dated(self, code: str) -> bool:
        info = self.category_info.get(code, {})
        return bool(info.get("effective_from") or info.get("periods"))

    def category_state(self, code: str, day: dt.date) -> ControlState:
        """The state on `day` of the control a category stands for."""
        info = self.category_info.get(code, {})
        return state_on(day, info.get("effective_from"), info.get("periods", ()), "")

    def item(self, code: str) -> str:
        """The regime's own item code for a category, saying when it is not verified."""
        info = self.category_info.get(code, {})
        if not info.get("catalogue_code"):
            return code  # a category of our own (an indicator, a PI type): no item code
        item = str(info["catalogue_code"])
        return item if info.get("code_verified", True) else f"{item} (code unverified)"

    def _describe(self, code: str, facts: Mapping[str, Any]) -> str:
        info = self.category_info.get(code, {})
        item = self.item(code) if info.get("catalogue_code") else ""
        names = " ".join(x for x in (item, info.get("name_zh")) if x)
        count = facts.get(f"matches.{code}", 0)
        return f"{code} {names} ×{count}" if names else f"{code} ×{count}"

    # --- conveniences for the stage, correlation and explain ---------------------
    def decide_file(self, event: FileEvent) -> list[Decision]:
        a = event.artefact
        if a is None or not a.matches:
            # the plan fields as `file_facts` gives them (no matches: no categories); when
            # no rule can fire on that combination (most local files) the other facts are
            # never needed: building them was two thirds of judging such an event
            kinds = frozenset(a.kinds) if a is not None else _NO_NAMES
            key = ("file", str(event.action), str(event.channel), kinds, _NO_NAMES)
            if self._plans.get(key) == ():
                return []
        f = facts_mod.file_facts(event, self.min_counts, self.min_confidence)
        return self.decide(f, event.time.date(), event.time)

    def decide_flow(self, flow: Flow) -> list[Decision]:
        return self.decide(facts_mod.flow_facts(flow), flow.time.date(), flow.time)

    def decide_transfer(
        self, artefact: Artefact, flow: Flow, file_event: FileEvent | None = None
    ) -> list[Decision]:
        """Decisions on an artefact that left in `flow` (for correlation and explain)."""
        f = facts_mod.transfer_facts(
            artefact, flow, self.min_counts, file_event, self.min_confidence
        )
        return self.decide(f, flow.time.date(), flow.time)


Gated = tuple[tuple[Rule, tuple[tuple[Hashable, Compare], ...]], ...]
_NO_NAMES: frozenset[str] = frozenset()


def _gates(rules: tuple[Rule, ...]) -> Gated:
    """Each rule with the comparisons its condition requires outright (the `Compare`s at
    the top of an `all`), in its order, keyed so that equal ones are shared across rules.
    A rule whose gates all hold is then judged in full (`Rule.fires`)."""
    out = []
    for rule in rules:
        c = rule.condition
        items = c.items if isinstance(c, All) else (c,)
        out.append((rule, tuple((_gate_key(i), i) for i in items if isinstance(i, Compare))))
    return tuple(out)


def _gate_key(c: Compare) -> Hashable:
    key = (c.field, c.op, _frozen(c.value))
    try:
        hash(key)
    except TypeError:
        return ("unshared", id(c))
    return key


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return ("list", tuple(_frozen(v) for v in value))
    if isinstance(value, set):
        return ("set", frozenset(value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _frozen(v)) for k, v in value.items())))
    return (type(value).__name__, value)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


_CONFIDENCE_RANK = {"low": 1, "medium": 2, "high": 3}


def highest_confidence(values: Any) -> str:
    """The highest of the categories' confidences ("" when none is known)."""
    best = ""
    for v in values:
        if isinstance(v, str) and _CONFIDENCE_RANK.get(v, 0) > _CONFIDENCE_RANK.get(best, 0):
            best = v
    return best


EMPTY_POLICY = Policy(version="none", packs=(), rules=(), categories=())
