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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

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


class PackMeta(_Strict):
    id: str = Field(pattern=PACK_ID)
    name: StrictStr
    name_zh: StrictStr | None = None
    regime: StrictStr
    version: StrictStr
    required_engine_version: str = Field(pattern=VERSION)
    description: StrictStr = ""
    disclaimer: StrictStr = ""
    sources: list[SourceModel] = Field(min_length=1)


class CategoryModel(_Strict):
    code: str = Field(pattern=CATEGORY_CODE)
    catalogue_code: StrictStr | None = None  # the regime's own number, e.g. "086501X"
    code_verified: StrictBool = False
    name_en: StrictStr
    name_zh: StrictStr = ""
    control: Literal["prohibited", "restricted", "licence", "assessment", "indicator"]
    status: str = Field(default="in_force", pattern=STATUS)
    effective_from: dt.date | None = None
    points: StrictStr = ""
    keywords_zh: list[StrictStr] = Field(default_factory=list)
    keywords_en: list[StrictStr] = Field(default_factory=list)
    patterns: list[StrictStr] = Field(default_factory=list)
    validator: StrictStr | None = None
    kinds: list[Kind] = Field(default_factory=list)
    min_count: StrictInt = Field(default=1, ge=1)
    sources: list[StrictStr] = Field(default_factory=list)


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


class RuleModel(_Strict):
    id: str = Field(pattern=RULE_ID)
    description: StrictStr
    condition: Any
    severity: Severity
    action: Literal["alert", "record"]
    tags: list[StrictStr] = Field(default_factory=list)
    exceptions: list[ExceptionModel] = Field(default_factory=list)
    status: str = Field(default="in_force", pattern=STATUS)
    effective_from: dt.date | None = None
    sources: list[StrictStr] = Field(default_factory=list)
    enabled: StrictBool = True
    tests: list[RuleTest] = Field(default_factory=list)


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
