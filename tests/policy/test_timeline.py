"""The legal time model: not yet in force / in force / suspended (end inclusive) / not
enforced, unverified states, the loader's checks, and a site's status override."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.policy.build import load_policy
from agent.policy.loader import SHIPPED_DIR
from agent.policy.timeline import (
    IN_FORCE,
    NOT_ENFORCED,
    NOT_YET,
    SUSPENDED,
    ControlState,
    Period,
    periods_from_status,
    state_on,
    strongest,
)
from tests.conftest import cli

D = dt.date.fromisoformat
# 1E902 as the pack writes it
RARE_EARTH = (
    Period(D("2025-10-09"), IN_FORCE, D("2025-11-07"), "Ann. 62"),
    Period(D("2025-11-08"), SUSPENDED, D("2026-11-10"), "Ann. 70"),
    Period(D("2026-11-11"), IN_FORCE, None, "Ann. 62", False, "status after the suspension"),
)


@pytest.mark.parametrize(
    ("day", "state", "verified"),
    [
        ("2025-03-01", NOT_YET, True),
        ("2025-10-08", NOT_YET, True),
        ("2025-10-09", IN_FORCE, True),
        ("2025-10-20", IN_FORCE, True),
        ("2025-11-07", IN_FORCE, True),
        ("2025-11-08", SUSPENDED, True),
        ("2026-11-10", SUSPENDED, True),  # "until and including"
        ("2026-11-11", IN_FORCE, False),
        ("2026-11-28", IN_FORCE, False),
    ],
)
def test_state_on_the_days_that_matter(day: str, state: str, verified: bool) -> None:
    got = state_on(D(day), D("2025-10-09"), RARE_EARTH, "law")
    assert (got.state, got.verified) == (state, verified)


def test_after_the_last_known_period_is_in_force_but_unverified() -> None:
    periods = (Period(D("2025-11-09"), SUSPENDED, D("2026-11-27"), "Ann. 72"),)
    on_end = state_on(D("2026-11-27"), D("2024-12-03"), periods)
    assert on_end.state == SUSPENDED and on_end.until == D("2026-11-27")
    after = state_on(D("2026-11-28"), D("2024-12-03"), periods, "Ann. 46")
    assert after.in_force and not after.verified and after.since == D("2026-11-28")
    assert "unverified" in after.describe() and "2026-11-27" in after.describe()
    before = state_on(D("2025-01-01"), D("2024-12-03"), periods, "Ann. 46")
    assert before.in_force and before.verified and before.ref == "Ann. 46"


def test_describe() -> None:
    assert ControlState(NOT_YET, until=D("2025-07-15")).describe() == (
        "not yet in force (from 2025-07-15)"
    )
    assert ControlState(SUSPENDED, D("2025-11-08"), D("2026-11-10"), "Ann. 70").describe() == (
        "suspended 2025-11-08 to 2026-11-10 inclusive (Ann. 70)"
    )
    assert ControlState(NOT_ENFORCED, D("2025-05-13")).describe() == "not enforced since 2025-05-13"


def test_old_status_strings() -> None:
    # suspended_until:D now includes D, as the announcements it copies do
    (p,) = periods_from_status("suspended_until:2026-11-10", D("2025-10-09"))
    assert state_on(D("2026-11-10"), D("2025-10-09"), (p,)).state == SUSPENDED
    assert state_on(D("2026-11-11"), D("2025-10-09"), (p,)).in_force
    (n,) = periods_from_status("rescinded_nonenforced", D("2025-01-13"))
    assert state_on(D("2026-01-01"), D("2025-01-13"), (n,)).state == NOT_ENFORCED
    assert periods_from_status("in_force", None) == ()


def test_strongest() -> None:
    s = ControlState(SUSPENDED)
    f = ControlState(IN_FORCE)
    y = ControlState(NOT_YET)
    assert strongest([y, s]) is s and strongest([s, f, y]) is f and strongest([]) is None


def _rule(rule_id: str, dates: str = "") -> str:
    """One rule of PACK: the same rule each time but for its dates (YAML lines)."""
    return f"""\
  - id: {rule_id}
    description: x
    condition: {{field: event, eq: file}}
    severity: low
    action: record
{dates}"""


PACK = (
    """\
pack:
  id: site-dates
  name: dates
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{title: site policy}]
rules:
"""
    + _rule("site-no-date")
    + _rule(
        "site-bad-timeline",
        """\
    effective_from: 2025-01-01
    timeline:
      - {from: 2025-06-01, state: in_force}
      - {from: 2025-03-01, state: suspended}
""",
    )
    + _rule(
        "site-until-before-from",
        """\
    effective_from: 2025-01-01
    timeline:
      - {from: 2025-06-01, until: 2025-05-01, state: suspended}
""",
    )
    + _rule(
        "site-both",
        """\
    effective_from: 2025-01-01
    status: rescinded_nonenforced
    timeline:
      - {from: 2025-06-01, state: in_force}
""",
    )
)


def test_loader_reports_missing_dates_and_bad_timelines(tmp_path: Path) -> None:
    f = tmp_path / "dates.yaml"
    f.write_text(PACK)
    res = cli("policy", "check", "--alone", str(f), check=False)
    assert res.returncode == 1
    out = res.stdout
    assert f"{f}:9: rule 'site-no-date': missing required field 'effective_from'" in out
    assert "overlaps or precedes" in out
    assert "until 2025-05-01 is before from 2025-06-01" in out
    assert "give either timeline or status, not both" in out


def test_site_status_override_wins_over_category_dates(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        PACK.split("rules:")[0]
        + "rules: []\noverrides:\n  - rule: cn-dual-use-technology-leaving\n    status: in_force\n"
    )
    policy, issues = load_policy([SHIPPED_DIR], [site])
    assert policy is not None, issues
    rule = next(r for r in policy.rules if r.id == "cn-dual-use-technology-leaving")
    state = policy.rule_state(rule, D("2026-06-01"), ("CN-DU-1E902-RARE-EARTH",))
    assert state.in_force and "site override" in state.ref
    shipped, _ = load_policy([SHIPPED_DIR])
    assert shipped is not None
    plain = next(r for r in shipped.rules if r.id == rule.id)
    assert shipped.rule_state(plain, D("2026-06-01"), ("CN-DU-1E902-RARE-EARTH",)).state == (
        SUSPENDED
    )


@pytest.mark.parametrize(
    ("utc", "state"),
    [
        # 23:59 on 2026-11-10 in Beijing: the last suspended minute
        ("2026-11-10T15:59:00+00:00", "suspended"),
        # 00:00 on 2026-11-11 in Beijing, still 2026-11-10 in UTC: the suspension is over
        ("2026-11-10T16:00:00+00:00", "in_force (unverified)"),
    ],
)
def test_days_are_the_regime_s_calendar_days(utc: str, state: str) -> None:
    from datetime import datetime

    from agent.events import Artefact, CategoryMatch, Channel, FileAction, FileEvent, Tag

    policy, issues = load_policy([SHIPPED_DIR])
    assert policy is not None, issues
    assert policy.zones["cn-export-catalogue"].key == "Asia/Shanghai"
    art = Artefact(
        "1" * 64,
        100,
        tags=(Tag("document", "text"),),
        matches=(CategoryMatch("CN-DU-1E902-RARE-EARTH", 3, "", 3, "high"),),
    )
    event = FileEvent(
        FileAction.WRITTEN,
        "/media/usb/a.txt",
        Channel.REMOVABLE,
        artefact=art,
        time=datetime.fromisoformat(utc),
    )
    (d,) = [d for d in policy.decide_file(event) if d.rule_id == "cn-dual-use-technology-leaving"]
    assert d.control_state == state


def test_unknown_timezone_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "tz.yaml"
    f.write_text(PACK.replace('  version: "1"\n', '  version: "1"\n  timezone: Mars/Olympus\n'))
    res = cli("policy", "check", "--alone", str(f), check=False)
    assert res.returncode == 1 and f"{f}:6: unknown timezone 'Mars/Olympus'" in res.stdout
