"""Confidence on the policy side: `confidence.CODE` facts, `categories` needing both
distinct terms and confidence, conditions on confidence, and the pack keys that set it
(checked at load with their line)."""

from __future__ import annotations

from pathlib import Path

from agent.events import Artefact, CategoryMatch, Channel, FileAction, FileEvent
from agent.policy import load_policy
from agent.policy.facts import artefact_facts, facts_from_mapping

PACK = """pack: {id: site-conf, name: c, regime: X, version: "1",
  required_engine_version: "1.0", sources: [{title: t}]}
categories:
  - code: SITE-TECH
    name_en: a technology
    control: restricted
    keywords_en: [widget process, widget recipe]
    supporting: [calibrated]
    min_count: 2
    thresholds:
      - {quantity: compaction_density, unit: g/cm3, ge: 2.5}
  - code: SITE-HIGH
    name_en: needs high confidence
    control: restricted
    keywords_en: [gizmo]
    min_confidence: high
rules:
  - id: site-tech-usb
    description: technology on USB
    effective_from: 2020-01-01
    severity: high
    action: alert
    condition:
      all:
        - {field: channel, eq: removable}
        - {field: categories, contains: SITE-TECH}
    tests:
      - {name: counts only mean medium, facts: {event: file, channel: removable,
          matches: {SITE-TECH: 2}}, expect: decision}
      - {name: low confidence is not present, facts: {event: file, channel: removable,
          matches: {SITE-TECH: 5}, confidence: {SITE-TECH: low}}, expect: none}
  - id: site-tech-high
    description: only sure matches
    effective_from: 2020-01-01
    severity: critical
    action: alert
    condition: {field: confidence.SITE-TECH, in: [high]}
    tests:
      - {name: high, facts: {event: file, confidence: {SITE-TECH: high}}, expect: decision}
      - {name: medium, facts: {event: file, confidence: {SITE-TECH: medium}}, expect: none}
"""


def _policy(tmp_path: Path, text: str = PACK):  # type: ignore[no-untyped-def]
    f = tmp_path / "site.yaml"
    f.write_text(text)
    return load_policy([], [f])


def test_pack_loads_and_its_rule_tests_pass(tmp_path: Path) -> None:
    policy, issues = _policy(tmp_path)
    assert not issues and policy is not None
    spec = {c.code: c for c in policy.categories}["SITE-TECH"]
    assert spec.supporting == ("calibrated",) and spec.thresholds[0].unit == "g/cm3"
    assert policy.min_confidence == {"SITE-TECH": "medium", "SITE-HIGH": "high"}


def test_present_needs_distinct_terms_and_confidence(tmp_path: Path) -> None:
    policy, _ = _policy(tmp_path)
    assert policy is not None

    def facts(*matches: CategoryMatch) -> dict[str, object]:
        out: dict[str, object] = {}
        artefact_facts(out, Artefact(sha256=None, size=1, matches=matches),
                       policy.min_counts, policy.min_confidence)  # fmt: skip
        return out

    f = facts(CategoryMatch("SITE-TECH", 9, "site-conf", distinct=1, confidence="high"))
    assert f["categories"] == frozenset() and f["matches.SITE-TECH"] == 9  # one term x9
    f = facts(CategoryMatch("SITE-TECH", 2, "site-conf", distinct=2, confidence="low"))
    assert f["categories"] == frozenset() and f["confidence.SITE-TECH"] == "low"
    f = facts(CategoryMatch("SITE-TECH", 2, "site-conf", distinct=2, confidence="medium"))
    assert f["categories"] == frozenset({"SITE-TECH"})
    f = facts(CategoryMatch("SITE-HIGH", 1, "site-conf", distinct=1, confidence="medium"))
    assert f["categories"] == frozenset()
    # recorded before distinct counting: judged by its count, at medium, as it was then
    f = facts(CategoryMatch("SITE-TECH", 3, "site-conf"))
    assert f["categories"] == frozenset({"SITE-TECH"}) and f["confidence.SITE-TECH"] == "medium"


def test_decisions_follow_confidence(tmp_path: Path) -> None:
    policy, _ = _policy(tmp_path)
    assert policy is not None

    def fired(conf: str) -> set[str]:
        m = CategoryMatch("SITE-TECH", 2, "site-conf", distinct=2, confidence=conf)
        event = FileEvent(
            FileAction.WRITTEN,
            "/media/usb/x.docx",
            Channel.REMOVABLE,
            artefact=Artefact(sha256=None, size=1, matches=(m,)),
        )
        return {d.rule_id for d in policy.decide_file(event)}

    assert fired("low") == set()
    assert fired("medium") == {"site-tech-usb"}
    assert fired("high") == {"site-tech-usb", "site-tech-high"}


def test_facts_from_mapping_confidence() -> None:
    f = facts_from_mapping({"matches": {"A": 2}, "confidence": {"A": "low"}}, {"A": 2})
    assert f["categories"] == frozenset() and f["confidence.A"] == "low"
    f = facts_from_mapping({"matches": {"A": 2}}, {"A": 2})
    assert f["categories"] == frozenset({"A"}) and f["confidence.A"] == "medium"
    f = facts_from_mapping({"matches": {"A": 2}, "confidence": {"A": "low"}}, {}, {"A": "low"})
    assert f["categories"] == frozenset({"A"})


def test_bad_confidence_keys_are_reported_at_their_line(tmp_path: Path) -> None:
    policy, issues = _policy(tmp_path, PACK.replace("unit: g/cm3", "unit: furlongs"))
    assert policy is None
    text = "\n".join(f"{i.line}: {i.message}" for i in issues)
    assert "11: category SITE-TECH: threshold unit 'furlongs' unknown" in text
    sure = PACK.replace("confidence: {SITE-TECH: medium}", "confidence: {SITE-TECH: sure}")
    _, issues = _policy(tmp_path, sure)
    assert [i.line for i in issues if "confidence 'sure'" in i.message] == [40]
    two = PACK.replace("ge: 2.5}", "ge: 2.5, lt: 3}")
    _, issues = _policy(tmp_path, two)
    assert any("exactly one of ge/gt/le/lt" in i.message for i in issues)
    unknown = PACK.replace("in: [high]}", "in: [high]}\n    tags: []").replace(
        "confidence.SITE-TECH, in", "confidence.NOPE, in"
    )
    _, issues = _policy(tmp_path, unknown)
    assert any("unknown category 'NOPE'" in i.message for i in issues)


def test_bad_supporting_pattern_is_reported_at_its_line(tmp_path: Path) -> None:
    bad = PACK.replace("    supporting: [calibrated]\n", "    supporting_patterns: ['[unclosed']\n")
    policy, issues = _policy(tmp_path, bad)
    assert policy is None
    assert issues[0].line == 8
    assert "'[unclosed' refused: bad regular expression" in issues[0].message
