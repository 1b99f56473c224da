"""`policy explain FILE --on DAY`: each matched category with its item, regime, distinct
count, confidence and state on DAY, and for each channel where it raised no alert, why."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent.events import Artefact, CategoryMatch, Tag
from agent.policy.build import load_policy
from agent.policy.explain import explain, format_text
from agent.policy.loader import SHIPPED_DIR
from agent.policy.model import Policy
from tests.conftest import cli, write_config

LFP_SHEET = """\
磷酸铁锂正极材料制备工艺说明(内部)
采用固相法合成LiFePO4：碳酸锂与磷酸铁按摩尔比1.02:1混合，砂磨至D50 0.4 μm，
喷雾干燥后于750 ℃氮气气氛烧结10 h。
压实密度 2.65 g/cm3 (220 MPa)，0.1C 克容量 162 mAh/g，首次库伦效率 97.5%。
"""


@pytest.fixture(scope="module")
def shipped() -> Policy:
    p, issues = load_policy([SHIPPED_DIR])
    assert p is not None, issues
    return p


def _by(report: dict, code: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in report["categories"] if c["code"] == code)


def _why(entry: dict, scenario: str) -> str | None:  # type: ignore[type-arg]
    return next((n["why"] for n in entry["not_fired"] if n["scenario"] == scenario), None)


def _art(distinct: dict[str, int], confidence: str = "high") -> Artefact:
    """A text document matching each category with its count of distinct terms."""
    return Artefact(
        "9" * 64,
        5000,
        tags=(Tag("document", "text"),),
        matches=tuple(
            CategoryMatch(code, n + 2, "", n, confidence) for code, n in distinct.items()
        ),
    )


def test_cli_on_day_before_and_after_the_2025_amendment(tmp_path: Path) -> None:
    sheet = tmp_path / "lfp.txt"
    sheet.write_text(LFP_SHEET, encoding="utf-8")
    cfg = write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})
    before = json.loads(
        cli("policy", "explain", "--json", "--on", "2025-03-01", str(sheet), config=cfg).stdout
    )
    assert before["day"] == "2025-03-01"
    cat = _by(before, "CN-CAT-252604X-CATHODE")
    assert cat["present"] and cat["item"] == "252604X" and cat["regime"] == "CN-TECH-CAT"
    assert cat["control_state"] == "not_yet_in_force" and not cat["in_force"]
    assert cat["distinct"] >= cat["min_count"] and cat["confidence"] in ("medium", "high")
    assert cat["fired"] == []  # recorded, never alerted, before 2025-07-15
    assert "not yet in force" in (_why(cat, "upload to a foreign destination") or "")
    assert _why(cat, "copy to local") == "no rule for this channel"
    upload = next(s for s in before["scenarios"] if s["scenario"].startswith("upload"))
    d = next(d for d in upload["decisions"] if d["rule_id"] == "cn-cat-transfer-foreign")
    assert d["action"] == "record" and not d["in_force"]
    assert d["control_state"] == "not_yet_in_force" and d["regime"] == "CN-TECH-CAT"

    after = json.loads(
        cli("policy", "explain", "--json", "--on", "2025-07-15", str(sheet), config=cfg).stdout
    )
    cat = _by(after, "CN-CAT-252604X-CATHODE")
    assert cat["in_force"] and cat["control_state"] == "in_force"
    fired = {f["scenario"] for f in cat["fired"]}
    assert {"copy to removable", "upload to a foreign destination"} <= fired

    text = cli("policy", "explain", "--on", "2025-03-01", str(sheet), config=cfg).stdout
    assert "on 2025-03-01:" in text and "not yet in force (from 2025-07-15)" in text
    assert "in force that day: no (not yet in force)" in text


def test_cli_rejects_a_bad_day(tmp_path: Path) -> None:
    sheet = tmp_path / "x.txt"
    sheet.write_text("hello\n")
    cfg = write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})
    res = cli("policy", "explain", "--on", "2025-13-01", str(sheet), config=cfg, check=False)
    assert res.returncode == 2 and "--on" in res.stderr


def test_below_minimum(shipped: Policy) -> None:
    report = explain(shipped, _art({"CN-CAT-252604X-CATHODE": 1}), "/x", dt.date(2026, 1, 5))
    cat = _by(report, "CN-CAT-252604X-CATHODE")
    assert not cat["present"] and cat["fired"] == []
    assert _why(cat, "copy to removable") == "below minimum: 1 distinct term(s), min_count 2"


def test_an_entry_not_in_force_beside_one_that_is(shipped: Policy) -> None:
    art = _art({"CN-CAT-RE-REFINING": 4, "CN-CAT-RE-CONTEXT": 3, "CN-CAT-252604X-CATHODE": 4})
    report = explain(shipped, art, "/mixed.txt", dt.date(2025, 3, 1))
    upload = "upload to a foreign destination"
    assert upload in {f["scenario"] for f in _by(report, "CN-CAT-RE-REFINING")["fired"]}
    why = _why(_by(report, "CN-CAT-252604X-CATHODE"), upload)
    assert why == (
        "not yet in force (from 2025-07-15) on this day; cn-cat-transfer-foreign alerts"
        " on another entry"
    )


def test_below_a_rule_threshold(shipped: Policy) -> None:
    """Three resident IDs are present, but the rules need 10 (and 10 000 for the CAC line)."""
    art = Artefact(
        "7" * 64,
        300,
        tags=(Tag("dataset", "csv"),),
        matches=(CategoryMatch("PI-PRC-RESIDENT-ID", 3, "", 3, "high"),),
    )
    report = explain(shipped, art, "/ids.csv", dt.date(2026, 1, 5))
    cat = _by(report, "PI-PRC-RESIDENT-ID")
    assert cat["present"] and cat["fired"] == []
    assert _why(cat, "copy to removable") == (
        "below the rule's threshold: 3, needs ge 10 (cn-pi-resident-ids-copied-out)"
    )
    assert _why(cat, "copy to local") == "no rule for this channel"
    limits = {(t["rule_id"], t["op"], t["value"]) for t in cat["thresholds"]}
    assert ("cn-pi-sensitive-assessment-abroad", "ge", 10000) in limits


def test_low_confidence(shipped: Policy) -> None:
    report = explain(shipped, _art({"CN-CAT-252604X-CATHODE": 4}, "low"), "/x", dt.date(2026, 1, 5))
    cat = _by(report, "CN-CAT-252604X-CATHODE")
    assert not cat["present"] and cat["confidence"] == "low"
    assert (_why(cat, "copy to removable") or "").startswith("low confidence: low, needs medium")


@pytest.mark.parametrize(
    ("day", "state", "why"),
    [
        ("2025-10-20", "not_yet_in_force", "recorded only: not yet in force on this day"),
        ("2026-11-10", "suspended", "recorded only: suspended on this day"),
        ("2026-11-11", "in_force (unverified)", None),
    ],
)
def test_3e901_states(shipped: Policy, day: str, state: str, why: str | None) -> None:
    art = _art({"CN-DU-3E901-BATTERY": 4})
    report = explain(shipped, art, "/cell.txt", dt.date.fromisoformat(day))
    cat = _by(report, "CN-DU-3E901-BATTERY")
    assert cat["control_state"] == state and cat["item"] == "3E901.a"
    got = _why(cat, "copy to removable")
    if why is None:
        assert got is None  # in force (unverified) on that day: it alerted
    else:
        assert got is not None and got.startswith(why)


def test_unverified_code_and_indicator(shipped: Policy) -> None:
    art = _art({"CN-CAT-RE-REFINING": 4, "CN-CAT-RE-CONTEXT": 3})
    report = explain(shipped, art, "/re.txt", dt.date(2026, 12, 1))
    refining = _by(report, "CN-CAT-RE-REFINING")
    assert not refining["code_verified"] and "(code unverified)" in refining["item"]
    context = _by(report, "CN-CAT-RE-CONTEXT")
    assert _why(context, "copy to removable") == "context indicator only (not an entry of its own)"
    text = "\n".join(format_text(report))
    assert "(code unverified)" in text and "fired: copy to removable" in text
