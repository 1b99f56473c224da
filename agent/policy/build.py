"""From parsed packs to one `Policy`: resolve pack ids, check cross-references, compile.

Order of precedence: a site pack whose id equals a shipped pack's replaces it; packs
named in `policies.disabled` are left out; `overrides:` in any pack then change single
rules (enable, severity, action, extra exceptions). Category codes and rule ids must be
unique among the packs in force. Problems found here carry `file:line` like the
schema's; the policy is only built when there are none. `load_policy` is the entry
point: files in, `(Policy, [])` or `(None, issues)` out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.categories import QUANTITY_WORDS, UNIT_FORMS, CategorySpec, Threshold
from agent.events import Action
from agent.linear_regex import PatternRefused, compile_pack_regex
from agent.policy import rules as rules_mod
from agent.policy._yaml import item_line, key_line, line_of
from agent.policy.loader import Issue, ParsedPack, pack_files, parse_pack
from agent.policy.model import (
    EMPTY_POLICY,
    PackInfo,
    Policy,
    Rule,
    Source,
)
from agent.policy.schema import CategoryModel
from agent.policy.selftest import run_rule_tests
from agent.policy.timeline import periods_from_status
from agent.validators import VALIDATORS


def load_policy(
    shipped: Sequence[Path],
    site: Sequence[Path] = (),
    disabled: Iterable[str] = (),
    parameters: Mapping[str, Any] | None = None,
) -> tuple[Policy | None, list[Issue]]:
    """Load shipped and site pack files (or directories) into one validated policy."""
    issues: list[Issue] = []
    parsed: list[ParsedPack] = []
    for paths, origin in ((shipped, "shipped"), (site, "site")):
        files, missing = pack_files(paths)
        issues.extend(missing)
        for f in files:
            pack, found = parse_pack(f, origin)
            issues.extend(found)
            if pack is not None:
                parsed.append(pack)
    policy, found = build_policy(parsed, set(disabled), dict(parameters or {}))
    issues.extend(found)
    return (policy, []) if not issues else (None, issues)


def build_policy(
    packs: Sequence[ParsedPack], disabled: set[str], parameters: Mapping[str, Any]
) -> tuple[Policy, list[Issue]]:
    issues: list[Issue] = []
    infos, active = _select(packs, disabled, issues)
    specs, info = _categories(active, issues)
    codes = {s.code for s in specs}
    counts = {s.code: s.min_count for s in specs}
    confidences = {s.code: s.min_confidence for s in specs}
    # rule tests check each rule as its pack wrote it: the pack's own parameter values,
    # before any site override, so a site's tuning cannot make a shipped test fail
    written: list[Rule] = []
    for pack in active:
        written.extend(rules_mod.compile_rules(pack, codes, {}, issues))
    written = [
        dataclasses.replace(r, tests=rules_mod.case_facts(r, counts, confidences))
        for r in rules_mod.unique_rules(written, issues)
    ]
    as_written = Policy("as-written", (), tuple(written), tuple(specs), category_info=info)
    issues.extend(run_rule_tests(as_written)[1])
    rules = written
    if any(k in p.parameters for p in active for k in parameters):
        # the same rules with the config's parameter values; their problems, if any,
        # were reported above
        recompiled: list[Rule] = []
        for pack in active:
            recompiled.extend(rules_mod.compile_rules(pack, codes, parameters, []))
        rules = [
            dataclasses.replace(r, tests=rules_mod.case_facts(r, counts, confidences))
            for r in rules_mod.unique_rules(recompiled, [])
        ]
    rules = _apply_overrides(active, rules, issues)
    digest = hashlib.sha256()
    for p in active:
        digest.update(f"{p.meta.id if p.meta else ''}\0{p.sha256}\0".encode())
    digest.update(json.dumps(dict(parameters), sort_keys=True, default=str).encode())
    # packs in force show what compiled; the others what their file holds
    infos = [
        dataclasses.replace(
            i,
            rules=sum(r.pack == i.id for r in rules),
            categories=sum(s.pack == i.id for s in specs),
        )
        if i.enabled
        else i
        for i in infos
    ]
    policy = Policy(
        version=digest.hexdigest(),
        packs=tuple(infos),
        rules=tuple(rules),
        categories=tuple(specs),
        loaded_at=time.time(),
        category_info=info,
    )
    return (policy if not issues else EMPTY_POLICY), issues


def _select(
    packs: Sequence[ParsedPack], disabled: set[str], issues: list[Issue]
) -> tuple[list[PackInfo], list[ParsedPack]]:
    """Pack infos for `policy list`, and the packs in force (site replaces shipped)."""
    by_id: dict[str, ParsedPack] = {}
    replaced: dict[str, str] = {}
    for p in packs:
        if p.meta is None:
            continue
        old = by_id.get(p.meta.id)
        if old is not None and not (old.origin == "shipped" and p.origin == "site"):
            line = key_line(p.raw["pack"], "id")
            issues.append(Issue(p.file, line, f"duplicate pack id {p.meta.id!r} (also {old.file})"))
            continue
        if old is not None:
            replaced[old.file] = p.file
        by_id[p.meta.id] = p
    infos, active = [], []
    for p in packs:
        if p.meta is None:
            continue
        in_force = by_id.get(p.meta.id) is p and p.meta.id not in disabled
        m = p.meta
        infos.append(
            PackInfo(
                id=m.id,
                name=m.name,
                regime=m.regime,
                version=m.version,
                file=p.file,
                sha256=p.sha256,
                origin=p.origin,
                enabled=in_force,
                replaced_by=replaced.get(p.file),
                rules=len(p.rules),
                categories=len(p.categories),
                sources=tuple(
                    Source(s.title, s.ref, s.url, str(s.date) if s.date else None, s.note)
                    for s in m.sources
                ),
                timezone=m.timezone,
            )
        )
        if in_force:
            active.append(p)
    return infos, active


def _categories(
    packs: Sequence[ParsedPack], issues: list[Issue]
) -> tuple[list[CategorySpec], dict[str, dict[str, Any]]]:
    specs: list[CategorySpec] = []
    info: dict[str, dict[str, Any]] = {}
    first: dict[str, str] = {}
    for pack in packs:
        assert pack.meta is not None
        for cat, raw in pack.categories:
            line = line_of(raw)
            where = f"{pack.file}:{line}"
            if cat.code in first:
                issues.append(
                    Issue(
                        pack.file,
                        key_line(raw, "code"),
                        f"duplicate category code {cat.code!r} (first at {first[cat.code]})",
                    )
                )
                continue
            first[cat.code] = where
            ok = True
            for i, (key, pattern) in enumerate(
                [("patterns", p) for p in cat.patterns]
                + [("supporting_patterns", p) for p in cat.supporting_patterns]
            ):
                try:
                    compile_pack_regex(pattern)
                except PatternRefused as e:
                    ok = False
                    at = item_line(raw[key], i if key == "patterns" else i - len(cat.patterns))
                    issues.append(
                        Issue(
                            pack.file,
                            at,
                            f"category {cat.code}: regular expression {pattern!r} refused: {e}",
                        )
                    )
            if cat.validator is not None and cat.validator not in VALIDATORS:
                ok = False
                issues.append(
                    Issue(
                        pack.file,
                        key_line(raw, "validator"),
                        f"category {cat.code}: unknown validator {cat.validator!r}"
                        f" (known: {', '.join(VALIDATORS)})",
                    )
                )
            if cat.validator is not None and not cat.patterns:
                issues.append(
                    Issue(
                        pack.file,
                        key_line(raw, "validator"),
                        f"category {cat.code}: a validator needs patterns",
                    )
                )
            keywords = tuple(k for k in (*cat.keywords_zh, *cat.keywords_en) if k.strip())
            if not keywords and not cat.patterns:
                ok = False
                issues.append(
                    Issue(pack.file, line, f"category {cat.code}: no keywords and no patterns")
                )
            thresholds = _thresholds(cat, raw, pack.file, issues)
            if not ok or thresholds is None:
                continue
            specs.append(
                CategorySpec(
                    code=cat.code,
                    pack=pack.meta.id,
                    name_en=cat.name_en,
                    name_zh=cat.name_zh,
                    keywords=keywords,
                    patterns=tuple(cat.patterns),
                    validator=cat.validator,
                    kinds=tuple(cat.kinds),
                    min_count=cat.min_count,
                    supporting=tuple(k for k in cat.supporting if k.strip()),
                    supporting_patterns=tuple(cat.supporting_patterns),
                    requires_context=tuple(k for k in cat.requires_context if k.strip()),
                    excludes=tuple(k for k in cat.excludes if k.strip()),
                    thresholds=thresholds,
                    min_confidence=cat.min_confidence,
                    window=cat.window,
                    corroborate=cat.corroborate,
                    ignore_genres=tuple(cat.ignore_genres),
                )
            )
            info[cat.code] = {
                "catalogue_code": cat.catalogue_code,
                "control": cat.control,
                "status": cat.status,
                "code_verified": cat.code_verified,
                "effective_from": cat.effective_from,
                "periods": rules_mod.periods(cat.timeline)
                or periods_from_status(cat.status, cat.effective_from),
                "points": cat.points,
                "regime": cat.regime or pack.meta.regime,
                "pack": pack.meta.id,
                "name_en": cat.name_en,
                "name_zh": cat.name_zh,
            }
    return specs, info


def _thresholds(
    cat: CategoryModel, raw: Any, file: str, issues: list[Issue]
) -> tuple[Threshold, ...] | None:
    """The category's legal thresholds; None (and an issue) if one cannot be read."""
    out = []
    for i, t in enumerate(cat.thresholds):
        at = item_line(raw["thresholds"], i)
        if t.unit.lower() not in UNIT_FORMS:
            issues.append(
                Issue(
                    file,
                    at,
                    f"category {cat.code}: threshold unit {t.unit!r} unknown"
                    f" (known: {', '.join(UNIT_FORMS)})",
                )
            )
            return None
        if not t.words and t.quantity not in QUANTITY_WORDS:
            issues.append(
                Issue(
                    file,
                    at,
                    f"category {cat.code}: quantity {t.quantity!r} needs `words`"
                    f" (built in: {', '.join(QUANTITY_WORDS)})",
                )
            )
            return None
        op = next(o for o in ("ge", "gt", "le", "lt") if getattr(t, o) is not None)
        value = float(getattr(t, op))
        words, when, unless = tuple(t.words), tuple(t.when), tuple(t.unless)
        out.append(Threshold(t.quantity, t.unit.lower(), op, value, words, when, unless))
    return tuple(out)


def _apply_overrides(
    packs: Sequence[ParsedPack], rules: list[Rule], issues: list[Issue]
) -> list[Rule]:
    index = {r.id: i for i, r in enumerate(rules)}
    for pack in packs:
        for ov, raw in pack.overrides:
            if ov.rule not in index:
                issues.append(
                    Issue(pack.file, key_line(raw, "rule"), f"override of unknown rule {ov.rule!r}")
                )
                continue
            extra = rules_mod.compile_exceptions(ov.exceptions, raw, pack.file, issues) or ()
            r = rules[index[ov.rule]]
            rules[index[ov.rule]] = dataclasses.replace(
                r,
                enabled=r.enabled if ov.enabled is None else ov.enabled,
                severity=ov.severity or r.severity,
                action=Action(ov.action) if ov.action else r.action,
                status=ov.status or r.status,
                # a site's status replaces the pack's timeline from the rule's start
                timeline=(
                    periods_from_status(ov.status, r.effective_from, f"site override ({pack.file})")
                    if ov.status
                    else r.timeline
                ),
                site_status=r.site_status or ov.status is not None,
                exceptions=r.exceptions + extra,
            )
    return rules
