"""Compiling one pack's rules: conditions, exceptions, and the facts of their test cases.

Called by `build` once every category in force is known, so that a rule may refer to
categories of other packs. Each problem is reported as an `Issue` with `file:line`; a
rule with a problem is left out (and the policy is not built).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.categories import CONFIDENCE_LEVELS
from agent.events import Action
from agent.policy import facts as facts_mod
from agent.policy._yaml import item_line, key_line, line_of
from agent.policy.conditions import (
    MAX_CONDITION_NODES,
    CompileContext,
    Condition,
    compile_condition,
    evaluated_size,
    referenced_categories,
)
from agent.policy.fields import field_type
from agent.policy.loader import Issue, ParsedPack
from agent.policy.model import Rule, RuleCase
from agent.policy.rule_exceptions import Network, RuleException
from agent.policy.schema import ExceptionModel, PeriodModel
from agent.policy.timeline import Period

_LOOKS_LIKE_IP = re.compile(r"^[0-9a-fA-F:.]+(/\d+)?$")


def compile_rules(
    pack: ParsedPack, codes: set[str], site_params: Mapping[str, Any], issues: list[Issue]
) -> list[Rule]:
    assert pack.meta is not None
    params = {k: site_params.get(k, v) for k, v in pack.parameters.items()}
    for name in set(params) & set(pack.lists):
        line = key_line(pack.raw.get("lists"), name)
        issues.append(Issue(pack.file, line, f"{name!r} is both a list and a parameter"))
    names = {**params, **pack.lists}

    ctx = CompileContext(
        report=lambda line, msg: issues.append(Issue(pack.file, line, msg)),
        resolve=names.__getitem__,
        macros=pack.macros,
        known_category=codes.__contains__,
    )
    # every macro is compiled (and its problems reported) once, used or not
    raw_macros = pack.raw.get("macros") or {}
    for name in pack.macros:
        _compile(ctx, {"macro": name}, key_line(raw_macros, name))
    out = []
    for model, raw in pack.rules:
        cond = _compile(ctx, model.condition, key_line(raw, "condition"))
        if cond is not None and (size := evaluated_size(cond)) > MAX_CONDITION_NODES:
            ctx.report(
                key_line(raw, "condition"),
                f"rule {model.id!r}: condition expands to {size} comparisons through its"
                f" macros (limit {MAX_CONDITION_NODES}); use fewer nested macro references",
            )
            cond = None
        exceptions = compile_exceptions(model.exceptions, raw, pack.file, issues)
        if model.effective_from is None:
            issues.append(
                Issue(
                    pack.file,
                    line_of(raw),
                    f"rule {model.id!r}: missing required field 'effective_from' (the day the"
                    " control it rests on began; for a site's own rule, the day it was adopted)",
                )
            )
        for i, case in enumerate(model.tests):
            check_test_facts(case.facts, raw["tests"][i], codes, pack.file, issues)
        if cond is None or exceptions is None:
            continue
        out.append(
            Rule(
                id=model.id,
                pack=pack.meta.id,
                description=model.description,
                condition=cond,
                severity=model.severity,
                action=Action(model.action),
                tags=tuple(model.tags),
                exceptions=exceptions,
                status=model.status,
                effective_from=model.effective_from,
                timeline=periods(model.timeline),
                legal_ref=model.legal_ref,
                item=model.item,
                categories=referenced_categories(cond),
                enabled=model.enabled,
                tests=tuple(
                    RuleCase(
                        c.name,
                        c.facts,
                        c.expect,
                        c.severity,
                        Action(c.action) if c.action else None,
                        item_line(raw["tests"], i),
                        c.date,
                        c.state,
                    )
                    for i, c in enumerate(model.tests)
                ),
                file=pack.file,
                line=line_of(raw),
            )
        )
    return out


def periods(models: Sequence[PeriodModel]) -> tuple[Period, ...]:
    """A pack's `timeline:` as the engine's periods."""
    return tuple(Period(m.start, m.state, m.until, m.ref, m.verified, m.note) for m in models)


def compile_exceptions(
    models: Sequence[ExceptionModel], raw: Any, file: str, issues: list[Issue]
) -> tuple[RuleException, ...] | None:
    out = []
    ok = True
    for i, e in enumerate(models):
        raw_e = raw["exceptions"][i]
        if not (e.destinations or e.users or e.processes or e.paths):
            issues.append(
                Issue(
                    file,
                    line_of(raw_e),
                    f"exception {e.name!r} matches nothing:"
                    " give destinations, users, processes or paths",
                )
            )
            ok = False
        nets: list[Network] = []
        hosts: list[str] = []
        for j, d in enumerate(e.destinations):
            if _LOOKS_LIKE_IP.match(d):
                try:
                    nets.append(ipaddress.ip_network(d, strict=False))
                except ValueError as err:
                    ok = False
                    at = item_line(raw_e["destinations"], j)
                    issues.append(Issue(file, at, f"exception {e.name!r}: bad CIDR {d!r}: {err}"))
            else:
                hosts.append(d.lower())
        out.append(
            RuleException(
                e.name,
                tuple(nets),
                tuple(hosts),
                tuple(e.users),
                tuple(e.processes),
                tuple(e.paths),
            )
        )
    return tuple(out) if ok else None


def check_test_facts(
    facts: Mapping[str, Any], raw: Any, codes: set[str], file: str, issues: list[Issue]
) -> None:
    raw_facts = raw.get("facts") if isinstance(raw, dict) else None
    for key, value in facts.items():
        line = key_line(raw_facts, key) if raw_facts is not None else line_of(raw)
        if key in ("matches", "confidence"):
            what = "counts" if key == "matches" else "low/medium/high"
            if not isinstance(value, dict):
                issues.append(
                    Issue(file, line, f"test facts: {key!r} must map category codes to {what}")
                )
                continue
            for code, v in value.items():
                if code not in codes:
                    issues.append(
                        Issue(file, key_line(value, code), f"test facts: unknown category {code!r}")
                    )
                elif key == "confidence" and v not in CONFIDENCE_LEVELS:
                    issues.append(
                        Issue(file, key_line(value, code), f"test facts: confidence {v!r}: {what}")
                    )
        elif field_type(str(key), codes.__contains__) is None:
            issues.append(Issue(file, line, f"test facts: unknown field {key!r}"))


def unique_rules(rules: list[Rule], issues: list[Issue]) -> list[Rule]:
    seen: dict[str, Rule] = {}
    out = []
    for r in rules:
        if r.id in seen:
            first = seen[r.id]
            issues.append(
                Issue(
                    r.file,
                    r.line,
                    f"duplicate rule id {r.id!r} (first at {first.file}:{first.line})",
                )
            )
            continue
        seen[r.id] = r
        out.append(r)
    return out


def case_facts(
    rule: Rule, counts: Mapping[str, int], confidences: Mapping[str, str] | None = None
) -> tuple[RuleCase, ...]:
    return tuple(
        dataclasses.replace(c, facts=facts_mod.facts_from_mapping(c.facts, counts, confidences))
        for c in rule.tests
    )


def _compile(ctx: CompileContext, raw: Any, line: int) -> Condition | None:
    try:
        return compile_condition(raw, ctx, line)
    except RecursionError:  # macro chains or nesting deeper than the interpreter allows
        ctx.report(line, "condition nested too deeply (macros or all/any/not)")
        return None
