"""A decision's legal fields (regime, law, item, in force, state, confidence) survive the store.

The decision is made by the shipped packs on a dated event, so what is stored is what
the engine says about that day — 1E902 during its suspension — not a hand-made record.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from agent.events import Artefact, CategoryMatch, Channel, FileAction, FileEvent, Tag
from agent.policy.build import load_policy
from agent.policy.loader import SHIPPED_DIR
from agent.store.codec import decode, encode
from agent.store.db import make_engine, register_host, upgrade
from agent.store.models import DecisionRow
from agent.store.writer import write_batch

HOST = "host-legal"
# a corroborated match, once CategoryMatch carries distinct terms and confidence
_SURE = (
    {"distinct": 3, "confidence": "high"}
    if "confidence" in {f.name for f in dataclasses.fields(CategoryMatch)}
    else {}
)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    eng = make_engine(url)
    upgrade(eng)
    register_host(eng, HOST, "legal-host")
    return eng


def _judged(day: datetime) -> FileEvent:
    policy, issues = load_policy([SHIPPED_DIR])
    assert policy is not None, issues
    art = Artefact(
        sha256="c" * 64,
        size=2048,
        content_type="text",
        tags=(Tag("document", "text"),),
        matches=(CategoryMatch("CN-DU-1E902-RARE-EARTH", 3, "cn-export-catalogue", **_SURE),),
    )
    event = FileEvent(
        FileAction.WRITTEN, "/media/usb/line.txt", Channel.REMOVABLE, artefact=art, time=day
    )
    decisions = tuple(
        d for d in policy.decide_file(event) if d.rule_id == "cn-dual-use-technology-leaving"
    )
    assert decisions, policy.decide_file(event)
    return FileEvent(
        event.action,
        event.path,
        event.channel,
        artefact=art,
        time=day,
        uid=event.uid,
        decisions=decisions,
    )


def test_suspended_decision_round_trips(engine: Engine) -> None:
    event = _judged(datetime(2026, 11, 10, 12, tzinfo=UTC))
    d = event.decisions[0]
    assert (d.in_force, d.control_state, d.action) == (False, "suspended", "record")
    assert d.regime == "CN-DUAL-USE" and d.item == "1E902.a / 1E902.b"
    assert "MOFCOM Ann. 2025 No. 70" in d.legal_ref
    assert d.confidence == _SURE.get("confidence", "")
    write_batch(engine, HOST, [event])
    with engine.connect() as conn:
        row = conn.execute(select(DecisionRow)).one()
    assert (row.regime, row.item, row.legal_ref) == (d.regime, d.item, d.legal_ref)
    assert (row.in_force, row.control_state, row.confidence) == (False, "suspended", d.confidence)


def test_unverified_state_after_the_suspension(engine: Engine) -> None:
    event = _judged(datetime(2026, 11, 11, 12, tzinfo=UTC))
    d = event.decisions[0]
    assert (d.in_force, d.control_state, d.action) == (True, "in_force (unverified)", "alert")
    assert "unverified" in d.reason
    write_batch(engine, HOST, [event])
    with engine.connect() as conn:
        row = conn.execute(select(DecisionRow)).one()
    assert row.in_force is True and row.control_state == "in_force (unverified)"


def test_spool_codec_keeps_the_fields() -> None:
    event = _judged(datetime(2025, 10, 20, 12, tzinfo=UTC))
    back = decode(encode(event))
    assert back.decisions == event.decisions
    assert back.decisions[0].in_force and back.decisions[0].control_state == "in_force"


def test_rows_written_before_the_migration_read_as_in_force(tmp_path: Path) -> None:
    """0001 rows get the defaults 0002 gives them: in force, empty texts."""
    eng = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(eng, "0001")
    with eng.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO decisions (uid, host_id, time, subject_kind, subject_uid, pack,"
                " rule_id, severity, action, policy_version, reason, categories) VALUES"
                " ('u:0', 'h', '2025-01-01 00:00:00', 'file_event', 'u', 'p', 'r', 'high',"
                " 'alert', 'v', 'why', '[]')"
            )
        )
    upgrade(eng)
    with eng.connect() as conn:
        row = conn.execute(select(DecisionRow)).one()
    assert (row.in_force, row.control_state, row.regime, row.confidence) == (
        True,
        "in_force",
        "",
        "",
    )
