"""The shipped packs: valid, sourced, and every rule's own YAML test cases pass."""

from __future__ import annotations

import pytest

from agent.config import PoliciesSection
from agent.policy import SHIPPED_DIR, load_configured, load_policy
from agent.policy.model import Policy
from agent.policy.selftest import run_rule_tests


@pytest.fixture(scope="module")
def shipped() -> Policy:
    policy, issues = load_policy([SHIPPED_DIR], parameters={"model_parameter_threshold": 10**9})
    assert not issues, "\n".join(map(str, issues))
    assert policy is not None
    return policy


def test_expected_packs_ship(shipped: Policy) -> None:
    assert len(RULE_IDS) >= 20
    ids = {p.id for p in shipped.packs}
    assert {"cn-export-catalogue", "cn-cross-border-data", "us-ear"} <= ids
    for p in shipped.packs:
        assert p.sources, f"{p.id} cites no source"


def test_every_rule_has_positive_and_negative_cases(shipped: Policy) -> None:
    for rule in shipped.rules:
        expects = {c.expect for c in rule.tests}
        assert expects == {"decision", "none"}, f"{rule.id}: needs a decision and a none case"


_SHIPPED, _ = load_policy([SHIPPED_DIR])
RULE_IDS = [r.id for r in _SHIPPED.rules] if _SHIPPED else []


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_cases_pass(shipped: Policy, rule_id: str) -> None:
    rule = next(r for r in shipped.rules if r.id == rule_id)
    single = Policy(
        shipped.version,
        shipped.packs,
        (rule,),
        shipped.categories,
        category_info=shipped.category_info,
    )
    ran, failures = run_rule_tests(single)
    assert ran == len(rule.tests) > 0
    assert not failures, "\n".join(map(str, failures))


def test_catalogue_entries_carry_their_codes(shipped: Policy) -> None:
    info = shipped.category_info
    assert info["CN-CAT-086501X-TTS"]["catalogue_code"] == "086501X"
    assert info["CN-CAT-252604X-CATHODE"]["catalogue_code"] == "252604X"
    assert info["CN-CAT-083201X-LITHIUM"]["catalogue_code"] == "083201X"
    assert info["CN-CAT-203912X-UAV"]["catalogue_code"] == "203912X"
    assert info["CN-CAT-RE-REFINING"]["control"] == "prohibited"
    assert info["CN-CAT-RE-CONTEXT"]["control"] == "indicator"
    specs = {c.code: c for c in shipped.categories}
    re_kw = specs["CN-CAT-RE-REFINING"].keywords
    for kw in ("稀土萃取分离", "溶剂萃取", "solvent extraction", "钕铁硼"):
        assert kw in re_kw
    assert specs["PI-PRC-RESIDENT-ID"].validator == "prc_resident_id"
    assert specs["PI-CN-MOBILE"].validator == "cn_mobile"


def test_parameter_threshold_comes_from_config() -> None:
    low, _ = load_configured(PoliciesSection(model_parameter_threshold=1000))
    high, _ = load_configured(PoliciesSection(model_parameter_threshold=10**12))
    assert low is not None and high is not None
    assert low.version != high.version
    facts = {
        "event": "file",
        "action": "written",
        "channel": "removable",
        "kinds": frozenset({"model_weights"}),
        "categories": frozenset(),
        "model_weights.parameters": 5_000_000,
    }
    assert "us-ear-model-weights-copied-out" in {d.rule_id for d in low.decide(facts)}
    assert "us-ear-model-weights-copied-out" not in {d.rule_id for d in high.decide(facts)}


def test_every_category_pattern_is_anchored_against_substrings(shipped: Policy) -> None:
    """Short acronyms are patterns with word boundaries, never bare keywords."""
    for spec in shipped.categories:
        for kw in spec.keywords:
            assert len(kw) >= 2, f"{spec.code}: keyword {kw!r} too short"
            if kw.isascii():
                assert len(kw) >= 5, f"{spec.code}: ASCII keyword {kw!r} would match inside words"


def test_event_index_does_not_change_decisions(shipped: Policy) -> None:
    """Rules skipped by the per-event index are exactly those that could not fire."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    codes = [c.code for c in shipped.categories]

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["file", "flow", "transfer", "other"]),
        st.sampled_from(["local", "removable", "network_share", "cloud_sync", "network"]),
        st.sampled_from(["written", "created", "deleted", "moved"]),
        st.sampled_from(["foreign", "internal", "unknown", "domestic"]),
        st.dictionaries(st.sampled_from(codes), st.integers(0, 30000), max_size=3),
        st.frozensets(st.sampled_from(["document", "dataset", "model_weights", "source_code"])),
        st.integers(0, 10**10),
    )
    def check(event, channel, action, dest, matches, kinds, n):  # type: ignore[no-untyped-def]
        facts = {
            "event": event,
            "channel": channel,
            "action": action,
            "dest_class": dest,
            "kinds": kinds,
            "bytes_out": n,
            "model_weights.parameters": n,
            "categories": frozenset(matches),
            **{f"matches.{c}": k for c, k in matches.items()},
        }
        got = {d.rule_id for d in shipped.decide(facts)}
        want = {r.id for r in shipped.rules if r.enabled and r.fires(facts)}
        assert got == want

    check()
