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
from agent.incidents.export import select, verify_file, write
from agent.incidents.log import IncidentLog
from agent.incidents.queries import chain_entries
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
    log = IncidentLog(sqlite_store, "host-a", "lab-ws-1", checkpoint_every=10)
    log.start()
    log.record(f)
    log.checkpoint("stop")
    return sqlite_store


def _export(engine: Engine, fmt: str) -> list[str]:
    buf = io.StringIO(newline="")
    write(select(chain_entries(engine)), fmt, buf)  # type: ignore[arg-type]
    return [ln for ln in buf.getvalue().splitlines() if ln]


def test_csv_names_the_incident_rule_s_legal_facts(store: Engine) -> None:
    rows = list(csv.DictReader(io.StringIO("\n".join(_export(store, "csv")))))
    (row,) = [r for r in rows if r["record_type"] == "incident"]
    assert (row["regime"], row["item"], row["in_force"], row["control_state"]) == (
        "US-EAR",
        "4E091",
        "False",
        "not_enforced",
    )
    assert "BIS announcement 2025-05-13" in row["legal_ref"]
    _fmt, report = verify_file(io.StringIO("\n".join(_export(store, "csv")) + "\n"))
    assert report.ok and report.incidents == 1


def test_ecs_names_regime_and_law_and_keeps_the_decisions(store: Engine) -> None:
    docs = [json.loads(ln) for ln in _export(store, "ecs")]
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
    _fmt, report = verify_file(io.StringIO("\n".join(_export(store, "ecs")) + "\n"))
    assert report.ok
