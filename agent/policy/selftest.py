"""Running the test cases each rule ships (`tests:` under a rule) against the rule.

A case gives facts and expects a decision or none (optionally with severity and action,
on an optional date); the rule's condition and exceptions decide. `policy check` runs
them, and so does CI over the shipped packs, so a rule cannot drift from its examples.
"""

from __future__ import annotations

import datetime as dt

from agent.policy.loader import Issue
from agent.policy.model import Policy


def run_rule_tests(policy: Policy) -> tuple[int, list[Issue]]:
    """Run every rule's cases; return how many ran and an issue per failing case."""
    ran = 0
    failures: list[Issue] = []
    for rule in policy.rules:
        for case in rule.tests:
            ran += 1
            fired = rule.fires(case.facts)
            where = f"rule {rule.id}, test {case.name!r}"
            if case.expect == "none":
                if fired:
                    failures.append(
                        Issue(rule.file, case.line, f"{where}: expected no decision, got one")
                    )
                continue
            if not fired:
                failures.append(
                    Issue(rule.file, case.line, f"{where}: expected a decision, got none")
                )
                continue
            decision = policy._decision(rule, case.facts, case.date or dt.date.today())
            if case.severity is not None and decision.severity != case.severity:
                failures.append(
                    Issue(
                        rule.file,
                        case.line,
                        f"{where}: severity {decision.severity}, expected {case.severity}",
                    )
                )
            if case.state is not None and decision.control_state != case.state:
                failures.append(
                    Issue(
                        rule.file,
                        case.line,
                        f"{where} on {case.date or 'today'}: control state "
                        f"{decision.control_state!r}, expected {case.state!r}",
                    )
                )
            if case.action is not None and decision.action != case.action:
                failures.append(
                    Issue(
                        rule.file,
                        case.line,
                        f"{where}: action {decision.action}, expected {case.action}",
                    )
                )
    return ran, failures
