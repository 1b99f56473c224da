"""One description per record: every field of `Flow` (and of the records it carries)
reaches the spool codec, the store row, the incident evidence and the export view, with
no list of fields written anywhere but agent/events.py and the renaming map."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import types
import typing
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from agent.events import Action, FileEvent, Flow, ProcessInfo
from agent.incidents.chain import ChainEntry
from agent.incidents.evidence import decision_doc, evidence_of, file_doc, flow_doc
from agent.incidents.export import FORMATS
from agent.incidents.export._view import view
from agent.incidents.model import canonical_json
from agent.store import codec, rows, schema_map
from agent.store.models import DecisionRow, FileEventRow, FlowRow

ROOT = Path(__file__).resolve().parents[2]

# the keys the chain has always signed stay as they are: these fields never enter a
# flow's evidence (a field added to Flow does, unless it is added here on purpose)
FLOW_EVIDENCE_LEAVES_OUT = {"name_source", "close_reason", "repository", "sensor", "decisions"}
# what the flows table keeps elsewhere or not at all
FLOW_ROW_LEAVES_OUT = {"repository", "sensor", "decisions"}


def sample(tp: Any, n: int) -> Any:
    """A value of annotation `tp` that is not its field's default (n makes it distinct)."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return sample(next(a for a in typing.get_args(tp) if a is not type(None)), n)
    if tp is str:
        return f"text-{n}"
    if tp is bool:
        return n % 2 == 0
    if tp is int:
        return 1000 + n
    if tp is datetime:
        return datetime(2026, 12, 6, tzinfo=UTC) + timedelta(seconds=n)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return list(tp)[-1]
    if typing.get_origin(tp) is dict:
        return {"key": f"value-{n}"}
    if typing.get_origin(tp) is tuple:
        return (sample(typing.get_args(tp)[0], n),)
    if dataclasses.is_dataclass(tp):
        return full(tp, n)
    raise AssertionError(f"teach sample() the annotation {tp!r}")


def full(cls: Any, n: int = 0) -> Any:
    """An instance of `cls` with every field set to a sample value."""
    hints = typing.get_type_hints(cls)
    return cls(
        **{f.name: sample(hints[f.name], n + i) for i, f in enumerate(dataclasses.fields(cls))}
    )


def chain_entry(incident: dict[str, Any]) -> ChainEntry:
    payload = canonical_json({"incident": incident, "hostname": "h"})
    return ChainEntry(1, "h", "incident", "2026-12-06T00:00:00+00:00", "i", payload, "0", "1")


def test_every_flow_field_survives_the_spool_codec() -> None:
    flow = full(Flow)
    for back in (codec.decode(codec.encode(flow)), codec.decode_checked(codec.encode(flow))):
        for f in dataclasses.fields(Flow):  # field by field: `repository` is not compared
            assert getattr(back, f.name) == getattr(flow, f.name), f.name
        assert type(back.decisions[0].action) is type(flow.decisions[0].action)


def test_flow_rows_are_the_flows_table() -> None:
    """Each field is a column (under its renamed name) or is left out on purpose."""
    flow = full(Flow)
    row = rows.flow_row(flow, "host")
    columns = set(FlowRow.__table__.columns.keys()) - {"id"}
    missing = set(row) - columns
    assert not missing, f"Flow fields without a flows column (add one, and a migration): {missing}"
    assert set(row) == columns
    kept = {f.name for f in dataclasses.fields(Flow)} - FLOW_ROW_LEAVES_OUT - {"process"}
    renamed = dict(zip(schema_map.FLOW_ROW.fields, schema_map.FLOW_ROW.names, strict=True))
    for name in kept:
        value = getattr(flow, name)
        assert row[renamed[name]] == (str(value) if isinstance(value, Enum) else value), name
    assert (row["pid"], row["uid_num"]) == (flow.process.pid, flow.process.uid)


def test_file_event_and_decision_rows_are_their_tables() -> None:
    event = full(FileEvent)
    assert set(rows.file_event_row(event, "h")) == set(FileEventRow.__table__.columns.keys()) - {
        "id"
    }
    (decision,) = rows.decision_rows(event, "h")
    assert set(decision) == set(DecisionRow.__table__.columns.keys()) - {"id"}
    assert decision["action"] == str(event.decisions[0].action)


def test_every_flow_field_reaches_the_evidence_and_the_export_view() -> None:
    flow = full(Flow)
    doc = flow_doc(flow)
    expected = {f.name for f in dataclasses.fields(Flow)} - FLOW_EVIDENCE_LEAVES_OUT
    assert set(doc) == expected
    assert json.loads(json.dumps(doc)) == doc  # plain JSON: times as text, enums as str
    assert doc["start"] == flow.start.isoformat() and doc["process"]["ppid"] == flow.process.ppid
    seen = view(chain_entry({"evidence": evidence_of({}, flows=[doc])})).flow
    assert dict(seen) == doc


def test_file_and_decision_evidence_are_plain_json() -> None:
    event = full(FileEvent)
    for doc in (file_doc(event, "touched"), decision_doc(event.uid, event.decisions[0])):
        assert json.loads(json.dumps(doc)) == doc
        assert all(type(v) in (str, int, bool, list, dict, type(None)) for v in doc.values())


def test_a_spool_of_the_previous_version_decodes_with_enum_actions() -> None:
    """A record spooled before the codec was derived (actions were plain text then)."""
    spooled = (
        '{"k":"flow","e":{"protocol":"tcp","src_ip":"10.0.0.2","src_port":40000,'
        '"dst_ip":"1.2.3.4","dst_port":443,"start":"2026-12-01T10:00:00+00:00",'
        '"end":"2026-12-01T10:00:05+00:00","bytes_out":5,"bytes_in":6,'
        '"byte_source":"tcp_info","name":"x.example","name_source":"sni","sni":"x.example",'
        '"http_host":null,"dest_class":"foreign","country":"US","close_reason":"fin",'
        '"process":{"pid":1,"exe":"/usr/bin/curl","cmdline":null,"uid":0,"user":"root",'
        '"ppid":null},"sensor":"network","uid":"abc","decisions":[{"rule_id":"R",'
        '"pack":"p","severity":"high","action":"alert","policy_version":"v","reason":"",'
        '"categories":["c"]}]}}'
    )
    for decoded in (codec.decode(spooled), codec.decode_checked(spooled)):
        assert isinstance(decoded, Flow)
        (d,) = decoded.decisions
        assert d.action is Action.ALERT
        assert (d.categories, decoded.process, decoded.dest_org) == (
            ("c",),
            ProcessInfo(pid=1, exe="/usr/bin/curl", uid=0, user="root"),
            None,
        )


# A new field on Flow, added the way a developer adds it: the class in agent/events.py
# gets one more field before anything imports it. Run in a fresh interpreter (about 1 s
# of CPU, the imports), so the modules that derive from Flow see only the new class.
TRIAL = textwrap.dedent(
    """
    import dataclasses, json
    import agent.events as events

    Trial = dataclasses.make_dataclass(
        "Flow", [("tcp_retransmits", int | None, dataclasses.field(default=None))],
        bases=(events.Flow,), frozen=True, slots=True,
    )
    Trial.__module__ = "agent.events"
    events.Flow = Trial

    from datetime import UTC, datetime
    from agent.incidents.chain import ChainEntry
    from agent.incidents.evidence import evidence_of, flow_doc
    from agent.incidents.export import FORMATS
    from agent.incidents.export._view import view
    from agent.incidents.model import canonical_json
    from agent.store import codec, rows

    t = datetime(2026, 12, 6, tzinfo=UTC)
    flow = events.Flow("tcp", "10.0.0.2", 1, "1.2.3.4", 443, t, t, tcp_retransmits=7)
    text = codec.encode(flow)
    doc = flow_doc(flow)
    payload = canonical_json({"incident": {"evidence": evidence_of({}, flows=[doc])}})
    entry = ChainEntry(1, "h", "incident", t.isoformat(), "i", payload, "0", "1")
    print(json.dumps({
        "fast": codec.decode(text).tcp_retransmits,
        "checked": codec.decode_checked(text).tcp_retransmits,
        "row": rows.flow_row(flow, "h")["tcp_retransmits"],
        "evidence": doc["tcp_retransmits"],
        "view": view(entry).flow["tcp_retransmits"],
        "exports": sorted(n for n, m in FORMATS.items() if "tcp_retransmits" in m.render(entry)),
    }))
    """
)


def test_a_field_added_to_flow_needs_no_other_edit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIAL], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    reached = json.loads(out.stdout)
    assert reached.pop("exports") == sorted(FORMATS)  # each carries the signed payload
    assert reached == dict.fromkeys(("fast", "checked", "row", "evidence", "view"), 7)


def test_the_map_names_only_real_fields() -> None:
    with pytest.raises(TypeError, match="Flow has no field bytes_sent"):
        schema_map.Projection(Flow, omit={"bytes_sent"})
