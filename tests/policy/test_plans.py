"""Decision plans (agent/policy/plans.py) decide exactly what every rule's full condition does."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.categories import CategorySpec
from agent.config import PoliciesSection
from agent.events import (
    Action,
    Artefact,
    CategoryMatch,
    Channel,
    FileAction,
    FileEvent,
    Severity,
    Tag,
)
from agent.policy.conditions import (
    All,
    AnyOf,
    Compare,
    CompileContext,
    Condition,
    compile_condition,
)
from agent.policy.facts import file_facts
from agent.policy.holder import load_configured
from agent.policy.model import Policy, Rule
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


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(FileAction)),
    st.sampled_from(list(Channel)),
    st.one_of(
        st.none(),
        st.builds(
            Artefact,
            sha256=st.just("ab" * 32),
            size=st.integers(0, 1 << 40),
            tags=st.lists(
                st.builds(
                    Tag,
                    kind=st.sampled_from(KINDS),
                    evidence=st.just("test"),
                    details=st.fixed_dictionaries(
                        {}, optional={"parameters": st.integers(0, 1 << 36)}
                    ),
                ),
                max_size=2,
            ).map(tuple),
            matches=st.lists(
                st.builds(
                    CategoryMatch,
                    category=st.sampled_from(CODES),
                    count=st.integers(1, 20),
                    pack=st.just("p"),
                    distinct=st.integers(0, 5),
                    confidence=st.sampled_from(["low", "medium", "high"]),
                ),
                max_size=2,
            ).map(tuple),
            skipped=st.sampled_from([None, "timeout"]),
        ),
    ),
)
def test_a_file_event_no_rule_can_fire_on_is_judged_without_its_facts(
    action: FileAction, channel: Channel, artefact: Artefact | None
) -> None:
    policy = shipped()
    event = FileEvent(action, "/home/a/f.bin", channel=channel, size=10, artefact=artefact)
    want = every_rule(policy, file_facts(event, policy.min_counts, policy.min_confidence))
    for _ in range(2):  # the first builds the plan, the second may take the shortcut
        assert [d.rule_id for d in policy.decide_file(event)] == want


def test_an_event_with_category_matches_is_judged_on_its_categories() -> None:
    """A rule on categories alone, on local disk too: a file whose matches make the
    category present decides, though its kinds and channel alone decide nothing."""
    rule = Rule(
        id="local-cat",
        pack="site",
        description="category on any channel",
        condition=All((Compare("categories", "contains", "CAT-X"),)),
        severity=Severity.LOW,
        action=Action.RECORD,
    )
    policy = Policy(
        version="t",
        packs=(),
        rules=(rule,),
        categories=(CategorySpec(code="CAT-X", pack="site"),),
    )
    plain = FileEvent(FileAction.WRITTEN, "/a", artefact=Artefact("ab" * 32, 1))
    assert policy.decide_file(plain) == [] and policy.decide_file(plain) == []
    matched = Artefact("cd" * 32, 1, matches=(CategoryMatch("CAT-X", 3, "site", 2, "high"),))
    event = FileEvent(FileAction.WRITTEN, "/b", artefact=matched)
    assert [d.rule_id for d in policy.decide_file(event)] == ["local-cat"]
