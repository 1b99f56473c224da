"""The shape of a policy pack file, as pydantic models (the boundary of the policy engine).

A pack is one YAML file: `pack:` metadata (id, regime, version, the engine version it
needs, its legal sources), reusable `parameters:`, `lists:` and `macros:`, the
`categories:` the classifier looks for, the `rules:` that turn facts into decisions (each
with its own `tests:`), and — in site packs — `overrides:` of rules shipped elsewhere.
Everything here is structure and types only; references between parts (categories,
macros, lists, regexes, CIDRs) are checked by `loader` with line numbers.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from agent.events import Severity

PACK_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"
RULE_ID = r"^[a-z0-9][a-z0-9._-]{0,127}$"
CATEGORY_CODE = r"^[A-Z0-9][A-Z0-9._-]{0,63}$"
NAME = r"^[a-z_][a-z0-9_]{0,63}$"
STATUS = r"^(in_force|rescinded_nonenforced|suspended_until:\d{4}-\d{2}-\d{2})$"
VERSION = r"^\d+(\.\d+){0,2}$"

ARTEFACT_KINDS = (
    "model_weights",
    "dataset",
    "source_code",
    "archive",
    "document",
    "engineering",
    "secret",
)
Kind = Literal[
    "model_weights", "dataset", "source_code", "archive", "document", "engineering", "secret"
]
Scalar = StrictStr | StrictBool | StrictInt | float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceModel(_Strict):
    """One citation: what it is, where to read it, and how sure we are."""

    title: StrictStr
    ref: StrictStr | None = None  # announcement or article number, e.g. "MOFCOM/MOST Ann. 2023-57"
    url: StrictStr | None = None
    date: dt.date | StrictStr | None = None
    note: StrictStr | None = None


CONTROL_STATES = ("in_force", "suspended", "not_enforced", "repealed")


class PeriodModel(_Strict):
    """One stretch of a control's legal life: from a day (and until a day, inclusive).

    Announcements say "suspended until and including D", so `until` is the last day the
    state holds. `verified: false` marks a state no source confirmed (say, what follows
    a suspension); users see "unverified" next to it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: dt.date = Field(alias="from")
    until: dt.date | None = None
    state: Literal["in_force", "suspended", "not_enforced", "repealed"]
    ref: StrictStr = ""
    verified: StrictBool = True
    note: StrictStr = ""

    @model_validator(mode="after")
    def _ordered(self) -> PeriodModel:
        if self.until is not None and self.until < self.start:
            raise ValueError(f"until {self.until} is before from {self.start}")
        return self


def check_timeline(periods: list[PeriodModel]) -> None:
    """Periods must follow one another without overlapping."""
    for a, b in itertools.pairwise(periods):
        if b.start <= a.start or (a.until is not None and b.start <= a.until):
            raise ValueError(
                f"timeline: period from {b.start} overlaps or precedes the one from {a.start}"
            )


class PackMeta(_Strict):
    id: str = Field(pattern=PACK_ID)
    name: StrictStr
    name_zh: StrictStr | None = None
    regime: StrictStr
    version: StrictStr
    required_engine_version: str = Field(pattern=VERSION)
    description: StrictStr = ""
    disclaimer: StrictStr = ""
    # the calendar of the regime's dates (IANA name): a suspension "until 2026-11-10"
    # ends at midnight Beijing time, not UTC; events are judged on their day there
    timezone: StrictStr = "UTC"
    sources: list[SourceModel] = Field(min_length=1)


class ThresholdModel(_Strict):
    """A numeric limit the law states, e.g. `{quantity: compaction_density, unit: g/cm3,
    ge: 2.58}`: exactly one of ge/gt/le/lt. `words` name the quantity in the text when
    the built-in vocabulary (agent/categories.py QUANTITY_WORDS) has no entry."""

    quantity: str = Field(pattern=NAME)
    unit: StrictStr
    words: list[StrictStr] = Field(default_factory=list)
    when: list[StrictStr] = Field(default_factory=list)  # only texts naming one of these
    unless: list[StrictStr] = Field(default_factory=list)  # not texts naming one of these
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ThresholdModel:
        given = [op for op in ("ge", "gt", "le", "lt") if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError(f"a threshold needs exactly one of ge/gt/le/lt, got {given}")
        return self


class CategoryModel(_Strict):
    code: str = Field(pattern=CATEGORY_CODE)
    catalogue_code: StrictStr | None = None  # the regime's own number, e.g. "086501X"
    code_verified: StrictBool = False
    regime: StrictStr | None = None  # when not the pack's (a dual-use item in a catalogue pack)
    name_en: StrictStr
    name_zh: StrictStr = ""
    control: Literal["prohibited", "restricted", "licence", "assessment", "indicator"]
    status: str = Field(default="in_force", pattern=STATUS)
    effective_from: dt.date | None = None
    timeline: list[PeriodModel] = Field(default_factory=list)  # the control's legal life
    points: StrictStr = ""
    keywords_zh: list[StrictStr] = Field(default_factory=list)
    keywords_en: list[StrictStr] = Field(default_factory=list)
    patterns: list[StrictStr] = Field(default_factory=list)
    validator: StrictStr | None = None
    kinds: list[Kind] = Field(default_factory=list)
    min_count: StrictInt = Field(default=1, ge=1)  # DISTINCT keywords / pattern values
    sources: list[StrictStr] = Field(default_factory=list)
    # confidence (agent/classify/keywords.py): corroboration near the primary terms
    supporting: list[StrictStr] = Field(default_factory=list)
    supporting_patterns: list[StrictStr] = Field(default_factory=list)
    requires_context: list[StrictStr] = Field(default_factory=list)
    excludes: list[StrictStr] = Field(default_factory=list)
    thresholds: list[ThresholdModel] = Field(default_factory=list)
    min_confidence: Literal["low", "medium", "high"] = "medium"
    window: StrictInt = Field(default=300, ge=20, le=5000)  # characters either side
    corroborate: StrictBool = True  # false for identifiers (IDs, card numbers)
    ignore_genres: list[Literal["news", "marketing", "datasheet", "licence", "abstract"]] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _timeline(self) -> CategoryModel:
        check_timeline(self.timeline)
        if self.timeline and self.status != "in_force":
            raise ValueError("give either timeline or status, not both")
        return self


class ExceptionModel(_Strict):
    """Data, not code: the rule does not fire when every field given here matches."""

    name: str = Field(pattern=NAME)
    destinations: list[StrictStr] = Field(default_factory=list)  # IPs, CIDRs, host globs
    users: list[StrictStr] = Field(default_factory=list)
    processes: list[StrictStr] = Field(default_factory=list)  # executable paths or globs
    paths: list[StrictStr] = Field(default_factory=list)  # file path globs
    note: StrictStr = ""


class RuleTest(_Strict):
    name: StrictStr
    facts: dict[str, Any]
    expect: Literal["decision", "none"]
    date: dt.date | None = None  # the day the event happens (default: today)
    severity: Severity | None = None
    action: Literal["alert", "record"] | None = None
    state: StrictStr | None = None  # the decision's control_state on `date`


class RuleModel(_Strict):
    id: str = Field(pattern=RULE_ID)
    description: StrictStr
    condition: Any
    severity: Severity
    action: Literal["alert", "record"]
    tags: list[StrictStr] = Field(default_factory=list)
    exceptions: list[ExceptionModel] = Field(default_factory=list)
    status: str = Field(default="in_force", pattern=STATUS)
    # required (reported by rules.compile_rules, so the rule's other mistakes are still
    # found): the day the control behind the rule began (a site rule: the day the site
    # adopted it); before it the rule records only, as "not yet in force"
    effective_from: dt.date | None = None
    timeline: list[PeriodModel] = Field(default_factory=list)
    legal_ref: StrictStr = ""  # the law or announcement an officer cites
    item: StrictStr = ""  # the item code when no category names it (e.g. "4E091")
    sources: list[StrictStr] = Field(default_factory=list)
    enabled: StrictBool = True
    tests: list[RuleTest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _timeline(self) -> RuleModel:
        check_timeline(self.timeline)
        if self.timeline and self.status != "in_force":
            raise ValueError("give either timeline or status, not both")
        if (
            self.timeline
            and self.effective_from is not None
            and self.timeline[0].start < self.effective_from
        ):
            raise ValueError(
                f"timeline starts {self.timeline[0].start}, before effective_from "
                f"{self.effective_from}"
            )
        return self


class OverrideModel(_Strict):
    """A site's change to a rule shipped in another pack."""

    rule: str = Field(pattern=RULE_ID)
    enabled: StrictBool | None = None
    severity: Severity | None = None
    action: Literal["alert", "record"] | None = None
    status: str | None = Field(default=None, pattern=STATUS)
    exceptions: list[ExceptionModel] = Field(default_factory=list)  # added to the rule's own
    note: StrictStr = ""


class PackDoc(_Strict):
    pack: PackMeta
    parameters: dict[str, Scalar] = Field(default_factory=dict)
    lists: dict[str, list[Scalar]] = Field(default_factory=dict)
    macros: dict[str, Any] = Field(default_factory=dict)
    categories: list[CategoryModel] = Field(default_factory=list)
    rules: list[RuleModel] = Field(default_factory=list)
    overrides: list[OverrideModel] = Field(default_factory=list)
