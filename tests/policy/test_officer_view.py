"""What a compliance officer sees: each decision names the regime, the law, the item code,
whether the control was in force on the event's day (and its state) and the confidence;
`incidents show` prints them; unverified codes say so."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.events import Artefact, CategoryMatch, Channel, FileAction, FileEvent, Flow, Tag
from agent.incidents.evidence import decision_doc
from agent.incidents.render import render_incident
from agent.policy.build import load_policy
from agent.policy.loader import SHIPPED_DIR
from agent.policy.model import Policy
from tests.conftest import cli, write_config


@pytest.fixture(scope="module")
def shipped() -> Policy:
    p, issues = load_policy([SHIPPED_DIR])
    assert p is not None, issues
    return p


def _usb(code: str, day: dt.date, confidence: str = "high") -> FileEvent:
    art = Artefact(
        sha256="d" * 64,
        size=4096,
        tags=(Tag("document", "text"),),
        matches=(CategoryMatch(code, 4, "", distinct=3, confidence=confidence),),
    )
    when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return FileEvent(
        FileAction.WRITTEN, "/media/usb/x.txt", Channel.REMOVABLE, artefact=art, time=when
    )


def _one(policy: Policy, event: FileEvent, rule: str):  # type: ignore[no-untyped-def]
    return next(d for d in policy.decide_file(event) if d.rule_id == rule)


def _sent_abroad(  # type: ignore[no-untyped-def]
    policy: Policy, code: str, day: str, rule: str, country: str | None = None
):
    """`rule`'s decision on a document of category `code` uploaded abroad at noon on `day`."""
    when = datetime.fromisoformat(f"{day}T12:00:00+00:00")
    art = Artefact(
        "e" * 64,
        9000,
        tags=(Tag("document", "text"),),
        matches=(CategoryMatch(code, 5, "", 4, "high"),),
    )
    flow = Flow(
        "tcp",
        "192.0.2.1",
        5000,
        "203.0.113.5",
        443,
        when,
        when,
        dest_class="foreign",
        country=country,
    )
    return next(d for d in policy.decide_transfer(art, flow) if d.rule_id == rule)


# per category, its control state on the days that matter; the rule alerts on the days
# the control is in force and records on the others
DAYS = {
    "CN-DU-1E902-RARE-EARTH": {
        "not_yet_in_force": ["2025-03-01"],
        "in_force": ["2025-10-09", "2025-10-20", "2025-11-07"],
        "suspended": ["2025-11-08", "2026-11-10"],
        "in_force (unverified)": ["2026-11-11"],
    },
    "CN-DU-3E901-BATTERY": {
        "not_yet_in_force": ["2025-10-20", "2025-11-07"],
        "suspended": ["2025-11-08", "2026-11-10"],
        "in_force (unverified)": ["2026-11-11"],
    },
}


@pytest.mark.parametrize(
    ("code", "day", "state", "action"),
    [
        (code, day, state, "alert" if state.startswith("in_force") else "record")
        for code, states in DAYS.items()
        for state, days in states.items()
        for day in days
    ],
)
def test_dual_use_dates(shipped: Policy, code: str, day: str, state: str, action: str) -> None:
    d = _one(shipped, _usb(code, dt.date.fromisoformat(day)), "cn-dual-use-technology-leaving")
    assert (d.control_state, d.action) == (state, action)
    assert d.in_force == state.startswith("in_force")
    assert d.regime == "CN-DUAL-USE" and d.confidence == "high"
    if state == "suspended":
        assert "MOFCOM Ann. 2025 No. 70" in d.legal_ref
        assert "suspended 2025-11-08 to 2026-11-10 inclusive" in d.reason
    if state == "not_yet_in_force":
        assert "not yet in force" in d.reason and "suspended" not in d.reason


@pytest.mark.parametrize(
    ("day", "action", "state"),
    [("2025-03-01", "record", "not_yet_in_force"), ("2025-07-15", "alert", "in_force")],
)
def test_lfp_upload_before_and_after_the_2025_amendment(
    shipped: Policy, day: str, action: str, state: str
) -> None:
    d = _sent_abroad(shipped, "CN-CAT-252604X-CATHODE", day, "cn-cat-transfer-foreign")
    assert (d.action, d.control_state, d.item) == (action, state, "252604X")


@pytest.mark.parametrize(
    ("day", "state"),
    [("2026-11-27", "suspended (unverified)"), ("2026-11-28", "in_force (unverified)")],
)
def test_gallium_germanium_us_ban(shipped: Policy, day: str, state: str) -> None:
    rule = "cn-du-gallium-germanium-to-us"
    d = _sent_abroad(shipped, "CN-DU-GALLIUM-GERMANIUM", day, rule, country="US")
    assert d.control_state == state and d.action == "record"
    if state.startswith("suspended"):
        assert "Ann. 2025 No. 72" in d.legal_ref and "2026-11-27 inclusive" in d.reason


def test_4e091_not_enforced_is_said_so(shipped: Policy) -> None:
    art = Artefact(
        "a" * 64,
        14_000_000_000,
        tags=(Tag("model_weights", "safetensors", {"parameters": 7_000_000_000}),),
    )
    when = datetime(2026, 11, 28, 12, tzinfo=UTC)
    event = FileEvent(
        FileAction.WRITTEN, "/media/usb/m.safetensors", Channel.REMOVABLE, artefact=art, time=when
    )
    d = _one(shipped, event, "us-ear-model-weights-copied-out")
    assert (d.regime, d.item, d.in_force, d.control_state) == (
        "US-EAR",
        "4E091",
        False,
        "not_enforced",
    )
    assert "not enforced since 2025-05-13" in d.reason and d.confidence == ""


def test_unverified_codes_say_so(shipped: Policy) -> None:
    d = _one(shipped, _usb("CN-CAT-LIDAR", dt.date(2026, 11, 28)), "cn-cat-restricted-removable")
    assert "(code unverified)" in d.item and "(code unverified)" in d.reason
    sure = _one(
        shipped, _usb("CN-CAT-086501X-TTS", dt.date(2026, 11, 28)), "cn-cat-restricted-removable"
    )
    assert sure.item == "086501X" and "unverified" not in sure.item


def test_semiconductor_is_recorded_only(shipped: Policy) -> None:
    decisions = shipped.decide_file(_usb("CN-CAT-SEMICONDUCTOR", dt.date(2026, 11, 28)))
    assert decisions and all(d.action == "record" for d in decisions)


def test_incidents_show_prints_the_legal_line(shipped: Policy) -> None:
    event = _usb("CN-DU-1E902-RARE-EARTH", dt.date(2026, 11, 10))
    d = _one(shipped, event, "cn-dual-use-technology-leaving")
    doc = {
        "id": 1,
        "uid": "u",
        "title": "t",
        "kind": "policy_alert",
        "severity": "high",
        "status": "open",
        "rule_id": d.rule_id,
        "pack": d.pack,
        "evidence": {"decisions": [decision_doc(event.uid, d)]},
    }
    text = render_incident(doc)
    assert "regime CN-DUAL-USE" in text and "item 1E902.a / 1E902.b" in text
    assert "in force that day: no (suspended)" in text and "confidence high" in text
    # an incident stored before these fields existed shows no legal line
    old = {k: v for k, v in decision_doc(event.uid, d).items() if k not in ("in_force",)}
    assert "in force that day" not in render_incident({**doc, "evidence": {"decisions": [old]}})


def test_policy_list_rules_text_says_unverified_and_the_state(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})
    text = cli("policy", "list", "--rules", "--on", "2026-11-10", config=cfg).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "083201X (code unverified)" in lines["cn-cat-2025-lithium-cathode-leaving"]
    dual = lines["cn-dual-use-technology-leaving"]
    assert " record " in dual and "1E902.a / 1E902.b, 3E901.a" in dual
    assert "suspended 2025-11-08 to 2026-11-10 inclusive (MOFCOM Ann. 2025 No. 70)" in dual
    assert "not enforced since 2025-05-13" in lines["us-ear-model-weights-abroad"]
