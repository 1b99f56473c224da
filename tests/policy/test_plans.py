"""Decision plans (agent/policy/plans.py) decide exactly what every rule's full condition does."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import PoliciesSection
from agent.events import Channel, FileAction
from agent.policy.conditions import AnyOf, CompileContext, Condition, compile_condition
from agent.policy.holder import load_configured
from agent.policy.model import Policy
from agent.policy.plans import MAX_PLANS, PLAN_FIELDS, residual

_SHIPPED: Policy | None = None


def shipped() -> Policy:
    global _SHIPPED
    if _SHIPPED is None:
        policy, issues = load_configured(PoliciesSection())
        assert policy is not None, issues
        _SHIPPED = policy
    return _SHIPPED


CODES = sorted({c.code for c in shipped().categories})
KINDS = ["model_weights", "dataset", "source_code", "document", "archive", "engineering", "secret"]
WHEN = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)

facts_strategy = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["file", "flow", "transfer", "tree"]),
        "channel": st.sampled_from([*map(str, Channel), "network"]),
        "kinds": st.frozensets(st.sampled_from(KINDS), max_size=3),
        "categories": st.frozensets(st.sampled_from(CODES), max_size=3),
    },
    optional={
        "action": st.sampled_from([str(a) for a in FileAction]),
        "dest_class": st.sampled_from(["internal", "approved", "foreign", "domestic"]),
        "size": st.integers(0, 1 << 40),
        "model_weights.parameters": st.integers(0, 1 << 36),
        "dataset.rows": st.integers(0, 1 << 30),
        "archive.nested_kinds": st.frozensets(st.sampled_from(KINDS), max_size=2),
        "secret.type": st.sampled_from(["private_key", "aws", "token"]),
        "skipped": st.sampled_from(["timeout", "deferred"]),
        f"matches.{CODES[0]}": st.integers(0, 20),
        "path": st.sampled_from(["/home/a/x.bin", "/srv/share/y.csv"]),
        "user": st.sampled_from(["alice", "svc-build"]),
    },
)


def every_rule(policy: Policy, facts: dict[str, Any]) -> list[str]:
    """The rules that fire, judged one by one on their whole conditions."""
    return [r.id for r in policy.rules if r.enabled and r.fires(facts)]


@settings(max_examples=400, deadline=None)
@given(facts_strategy)
def test_a_plan_decides_what_every_rule_in_full_decides(facts: dict[str, Any]) -> None:
    policy = shipped()
    decided = policy.decide(facts, when=WHEN)
    assert [d.rule_id for d in decided] == every_rule(policy, facts)
    # the second event of the same combination takes the plan made for the first
    assert policy.decide(dict(facts), when=WHEN) == decided


def test_some_combinations_fire_and_plans_are_bounded() -> None:
    policy = shipped()
    fired = policy.decide(
        {
            "event": "file",
            "action": "written",
            "channel": "removable",
            "kinds": frozenset({"model_weights"}),
            "categories": frozenset(),
            "model_weights.parameters": 10**10,
            "size": 10**10,
        },
        when=WHEN,
    )
    assert fired, "a large model copied to a removable disk decides something"
    policy._plans.clear()
    for i in range(MAX_PLANS + 5):
        policy.decide({"event": "file", "channel": f"c{i}", "kinds": frozenset()}, when=WHEN)
    assert 0 < len(policy._plans) <= MAX_PLANS


def test_unhashable_plan_fields_are_judged_rule_by_rule() -> None:
    policy = shipped()
    facts = {
        "event": "file",
        "action": "written",
        "channel": "removable",
        "kinds": ["model_weights"],  # a list, as a hand-written fact might be
        "categories": frozenset(),
        "model_weights.parameters": 10**10,
        "size": 10**10,
    }
    assert [d.rule_id for d in policy.decide(facts, when=WHEN)] == every_rule(policy, facts)


def _compile(raw: Any) -> Condition:
    ctx = CompileContext(
        report=lambda line, msg: None,
        resolve=lambda name: [],
        macros={},
        known_category=lambda code: code.startswith("CAT-"),
    )
    cond = compile_condition(raw, ctx)
    assert cond is not None
    return cond


MIXED = {
    "any": [
        {"all": [{"field": "channel", "in": ["removable"]}, {"field": "size", "ge": 5}]},
        {"not": {"field": "kinds", "contains": "document"}},
        {
            "all": [
                {"field": "categories", "contains_any": ["CAT-A"]},
                {
                    "not": {
                        "any": [
                            {"field": "user", "eq": "root"},
                            {"field": "action", "exists": True},
                        ]
                    }
                },
            ]
        },
    ]
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["removable", "local", None]),
    st.frozensets(st.sampled_from(["document", "dataset"]), max_size=2),
    st.frozensets(st.sampled_from(["CAT-A", "CAT-B"]), max_size=2),
    st.sampled_from(["written", None]),
    st.one_of(st.none(), st.integers(0, 10)),
    st.sampled_from(["root", "alice", None]),
)
def test_a_residual_holds_exactly_when_the_condition_does(
    channel: str | None,
    kinds: frozenset[str],
    categories: frozenset[str],
    action: str | None,
    size: int | None,
    user: str | None,
) -> None:
    cond = _compile(MIXED)
    facts: dict[str, Any] = {"event": "file", "channel": channel, "kinds": kinds}
    facts.update(categories=categories, action=action, size=size, user=user)
    known = {f: facts.get(f) for f in PLAN_FIELDS}
    left = residual(cond, known)
    whole = cond(facts)
    assert (left if isinstance(left, bool) else left(facts)) is whole
    if not isinstance(left, bool):
        # what is left never tests a plan field again
        assert not any(
            f in repr(left) for f in ("'channel'", "'kinds'", "'categories'", "'action'")
        )


def test_residual_of_an_empty_any_is_false() -> None:
    assert residual(AnyOf(()), {}) is False
