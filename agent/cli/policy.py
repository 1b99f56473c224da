"""`egress-agent policy check | list | explain | eval`: validate, show, try on a file, score."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli._common import UserError, existing_path, print_json, settings_from
from agent.events import Action

if TYPE_CHECKING:
    from agent.config import PoliciesSection


@click.group()
def policy() -> None:
    """Export-control policy packs: check, list, explain, eval."""


def _load(section: PoliciesSection, extra: tuple[str, ...] = ()) -> Any:
    from agent.policy import load_configured

    return load_configured(section, extra_site=[Path(p) for p in extra])


def _configured_policy(section: PoliciesSection) -> Any:
    """The configured policy; its problems on stderr and a UserError when it is invalid."""
    policy_obj, issues = _load(section)
    if policy_obj is None:
        for issue in issues:
            click.echo(str(issue), err=True)
        raise UserError(f"the configured policy is invalid ({len(issues)} problem(s))")
    return policy_obj


@policy.command("check")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--alone", is_flag=True, help="Check PATHs without the shipped packs beside them.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def policy_check(ctx: click.Context, paths: tuple[str, ...], alone: bool, as_json: bool) -> None:
    """Validate packs and run every rule's tests; report every problem with file:line.

    Without PATH: the configured packs. With PATHs (files or directories): those packs,
    loaded as site packs beside the shipped ones (unless --alone). Exit 1 on any problem.
    """
    s = settings_from(ctx)
    section = s.policies
    if paths:
        section = section.model_copy(update={"paths": [], "builtin": not alone})
    from agent.policy import load_policy
    from agent.policy.loader import SHIPPED_DIR

    policy_obj, issues = load_policy(
        [SHIPPED_DIR] if section.builtin else [],
        [*section.paths, *(Path(p) for p in paths)],
        section.disabled,
        section.pack_parameters(),
    )
    ran = sum(len(r.tests) for r in policy_obj.rules) if policy_obj else 0
    if as_json:
        print_json(
            {
                "ok": not issues,
                "issues": [{"file": i.file, "line": i.line, "message": i.message} for i in issues],
                "version": policy_obj.version if policy_obj else None,
                "rule_tests": ran,
            }
        )
    else:
        for issue in issues:
            click.echo(str(issue))
    if issues:
        if not as_json:
            files = len({i.file for i in issues})
            click.echo(f"{len(issues)} problem(s) in {files} file(s)", err=True)
        ctx.exit(1)
    assert policy_obj is not None
    if not as_json:
        enabled = [p for p in policy_obj.packs if p.enabled]
        click.echo(
            f"ok: {len(enabled)} pack(s), {len(policy_obj.rules)} rules, "
            f"{len(policy_obj.categories)} categories, {ran} rule tests passed; "
            f"version {policy_obj.version[:12]}"
        )


@policy.command("list")
@click.option("--rules", "show_rules", is_flag=True, help="The rules, with their legal status.")
@click.option(
    "--on", "day", type=click.DateTime(["%Y-%m-%d"]), help="Status on this day (--rules)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pack (or rule).")
@click.pass_context
def policy_list(ctx: click.Context, show_rules: bool, day: Any, as_json: bool) -> None:
    """The configured packs: version, regime, rule and category counts, enabled or not.

    With --rules: every rule with its severity, action, legal status and whether its
    control is in force today (or on --on DAY); a rule whose control is not in force
    only records.
    """
    s = settings_from(ctx)
    policy_obj = _configured_policy(s.policies)
    if show_rules:
        _list_rules(policy_obj, (day.date() if day else dt.date.today()), as_json)
        return
    for p in policy_obj.packs:
        state = "enabled" if p.enabled else ("replaced" if p.replaced_by else "disabled")
        if as_json:
            print_json(
                {
                    "id": p.id,
                    "name": p.name,
                    "regime": p.regime,
                    "version": p.version,
                    "origin": p.origin,
                    "state": state,
                    "rules": p.rules,
                    "categories": p.categories,
                    "file": p.file,
                    "sha256": p.sha256,
                }
            )
        else:
            click.echo(
                f"{p.id:<22} {p.version:<14} {p.regime:<12} {state:<9} "
                f"{p.rules:>3} rules {p.categories:>3} categories  {p.origin}: {p.file}"
            )
    if not as_json:
        click.echo(f"policy version {policy_obj.version[:12]}")


def _list_rules(policy_obj: Any, day: dt.date, as_json: bool) -> None:
    for r in policy_obj.rules:
        state = policy_obj.rule_state(r, day)
        in_force, why = state.in_force, "" if state.in_force else state.describe()
        doc = {
            "id": r.id,
            "pack": r.pack,
            "regime": policy_obj.regimes.get(r.pack, ""),
            "severity": str(r.severity),
            "action": r.action if in_force else Action.RECORD,
            "status": r.status,
            "state": state.state,
            "state_verified": state.verified,
            "state_text": state.describe(),
            "legal_ref": r.legal_ref,
            "items": sorted(
                {
                    policy_obj.item(c)
                    for c in r.categories
                    if policy_obj.category_info.get(c, {}).get("control") != "indicator"
                }
                | ({r.item} - {""})
            ),
            "effective_from": str(r.effective_from) if r.effective_from else None,
            "in_force": in_force,
            "why_not": why or None,
            "enabled": r.enabled,
            "tests": len(r.tests),
        }
        if as_json:
            print_json(doc)
            continue
        # the item codes (unverified ones say so) and the control's state that day
        shown_state = doc["state_text"] if r.enabled else "disabled"
        items = ", ".join(doc["items"]) or "-"
        head = f"{r.id:<40} {r.pack:<20} {doc['severity']:<8} {doc['action']:<6}"
        click.echo(f"{head} {items} — {shown_state}")


@policy.command("explain")
@click.argument("path", type=click.Path())
@click.option(
    "--on",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The day the file leaves (default today): controls are judged as in force then.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def policy_explain(ctx: click.Context, path: str, day: Any, as_json: bool) -> None:
    """Classify FILE and show which categories and rules it triggers on each channel.

    For each category that matched: its code, item, regime, distinct terms against the
    minimum, confidence and the control's state on DAY; and on each channel where it
    raised no alert, why (below minimum, low confidence, not in force that day, no rule).
    """
    from agent.policy.explain import explain, format_text

    s = settings_from(ctx)
    target = existing_path(path)
    policy_obj = _configured_policy(s.policies)
    try:
        from agent.classify import classify_file
    except ImportError as e:
        raise UserError(f"the classifier is not available: {e}") from None
    artefact = classify_file(str(target), policy_obj.categories, s)
    report = explain(policy_obj, artefact, os.fsdecode(target), day.date() if day else None)
    if as_json:
        print_json(report)
        return
    for line in format_text(report):
        click.echo(line)


@policy.command("eval")
@click.argument("directory", type=click.Path())
@click.option(
    "--files",
    "files",
    type=click.Path(),
    help="Cache that `fetch:` cases resolve in (default ~/.cache/egress-agent/eval).",
)
@click.option("--on", "day", type=click.DateTime(["%Y-%m-%d"]), help="Day the events happen.")
@click.option(
    "--min-precision", type=click.FloatRange(0, 1), help="Exit 1 if alert precision is lower."
)
@click.option("--min-recall", type=click.FloatRange(0, 1), help="Exit 1 if alert recall is lower.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def policy_eval(
    ctx: click.Context,
    directory: str,
    files: str | None,
    day: Any,
    min_precision: float | None,
    min_recall: float | None,
    as_json: bool,
) -> None:
    """Score the configured packs on a labelled case set DIR (DIR/cases.yaml).

    Each case file is classified, put on each channel it is labelled for, and decided;
    prints the (expected, got) counts per channel, alert precision and recall, and every
    mismatch with the rules and categories that fired. With --min-precision or
    --min-recall, exit 1 when any channel is below. See docs/policy.md.
    """
    from agent.policy.evalset import ManifestError, load_case_set
    from agent.policy.evaluate import format_text, report, run_cases

    s = settings_from(ctx)
    cache = Path(files) if files else Path.home() / ".cache" / "egress-agent" / "eval"
    try:
        case_set = load_case_set(Path(directory), cache)
    except ManifestError as e:
        raise UserError(str(e)) from None
    policy_obj = _configured_policy(s.policies)
    from agent.classify import Classifier

    cats = tuple(policy_obj.categories)
    classifier = Classifier(s.classify, cache=None, categories=lambda: cats)
    when = day.date() if day else None
    try:
        _, score = run_cases(policy_obj, case_set, classifier.classify_path, when)
    finally:
        classifier.close()
    on = when or case_set.day or dt.date.today()
    failures = score.gate_failures(min_precision, min_recall)
    doc = report(case_set, policy_obj, score, on, failures)
    if as_json:
        print_json(doc)
    else:
        for line in format_text(doc):
            click.echo(line)
    if failures:
        ctx.exit(1)
