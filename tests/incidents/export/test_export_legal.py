"""Exports name what an officer acts on: the regime, law, item, whether the control was in
force on the event's day, its state and the confidence of the incident's decision."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import Engine

from agent.events import Decision, Severity
from agent.incidents.evidence import decision_doc
from agent.incidents.export import verify_file
from tests.incidents.export.exporting import exported, with_incident
from tests.incidents.helpers import finding

SUSPENDED = Decision(
    rule_id="ear.model_weights",  # the helper finding's rule
    pack="us-ear",
    severity=Severity.HIGH,
    action="record",
    policy_version="v1",
    reason="weights (not enforced since 2025-05-13 (BIS announcement 2025-05-13): recorded only)",
    regime="US-EAR",
    legal_ref="EAR ECCN 4E091 (90 FR 4544); BIS announcement 2025-05-13",
    item="4E091",
    in_force=False,
    control_state="not_enforced",
    confidence="",
)


@pytest.fixture
def store(sqlite_store: Engine) -> Engine:
    f = finding(1)
    other = Decision("other.rule", "p", Severity.LOW, "record", "v1", "x", regime="OTHER")
    f.evidence["decisions"] = [  # type: ignore[index]
        decision_doc("u1", other),
        decision_doc("u1", SUSPENDED),
    ]
    return with_incident(sqlite_store, f)


def test_csv_names_the_incident_rule_s_legal_facts(store: Engine) -> None:
    rows = list(csv.DictReader(io.StringIO("\n".join(exported(store, "csv")))))
    (row,) = [r for r in rows if r["record_type"] == "incident"]
    assert (row["regime"], row["item"], row["in_force"], row["control_state"]) == (
        "US-EAR",
        "4E091",
        "False",
        "not_enforced",
    )
    assert "BIS announcement 2025-05-13" in row["legal_ref"]
    _fmt, report = verify_file(io.StringIO("\n".join(exported(store, "csv")) + "\n"))
    assert report.ok and report.incidents == 1


def test_ecs_names_regime_and_law_and_keeps_the_decisions(store: Engine) -> None:
    docs = [json.loads(ln) for ln in exported(store, "ecs")]
    (alert,) = [d for d in docs if d["event"]["kind"] == "alert"]
    assert alert["rule"]["category"] == "US-EAR"
    assert "90 FR 4544" in alert["rule"]["reference"]
    stored = alert["egress"]["record"]["incident"]["evidence"]["decisions"]
    mine = next(d for d in stored if d["rule_id"] == "ear.model_weights")
    assert (mine["in_force"], mine["control_state"], mine["item"]) == (
        False,
        "not_enforced",
        "4E091",
    )
    _fmt, report = verify_file(io.StringIO("\n".join(exported(store, "ecs")) + "\n"))
    assert report.ok
