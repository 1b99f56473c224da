"""Property tests for the CSV and CEF escapers and for exports of hostile incident text."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.incidents.chain import GENESIS_PREV, ChainEntry, link_hash, make_payload
from agent.incidents.export import verify_file, write
from agent.incidents.export.cef import (
    escape_header,
    escape_value,
    parse_extension,
    split_header,
    unescape_value,
)
from agent.incidents.export.csv import safe_cell, unsafe_cell
from agent.incidents.model import iso, new_document
from agent.store.rows import storable_text
from tests.incidents.helpers import T0, finding

# text an attacker controls: file names with formula starts, separators, newlines,
# surrogate-escaped bytes rendered as \xNN, CJK
hostile = st.text(
    alphabet=st.sampled_from(list("=+-@\t\r\n|\\'\" ,;a=b 模型\x00")) | st.characters(),
    max_size=40,
)


@given(hostile)
def test_csv_cell_is_never_a_formula_and_reverses(value: str) -> None:
    cell = safe_cell(value)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\0"))
    assert unsafe_cell(cell) == value


@given(st.lists(hostile, min_size=1, max_size=6))
def test_csv_row_round_trips_through_the_csv_module(values: list[str]) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerow(
        [safe_cell(v) for v in values]
    )
    back = next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert [unsafe_cell(c) for c in back] == values


@given(hostile)
def test_cef_value_escape_round_trips(value: str) -> None:
    escaped = escape_value(value)
    assert "\n" not in escaped and "\r" not in escaped
    assert unescape_value(escaped) == value


@given(st.lists(st.tuples(st.sampled_from(["fname", "msg", "cs1", "dhost"]), hostile), max_size=4))
def test_cef_extension_parses_back(pairs: list[tuple[str, str]]) -> None:
    unique = dict(pairs)
    ext = " ".join(f"{k}={escape_value(v)}" for k, v in unique.items())
    assert parse_extension(ext) == unique


@given(st.lists(hostile, min_size=7, max_size=7))
def test_cef_header_splits_into_its_fields(fields: list[str]) -> None:
    line = "|".join(escape_header(f) for f in fields) + "|k=v"
    header, ext = split_header(line)
    assert len(header) == 7
    flat = [f.replace("\r\n", " ").replace("\n", " ").replace("\r", " ") for f in fields]
    assert header == flat
    assert parse_extension(ext) == {"k": "v"}


@settings(max_examples=40, deadline=None)
@given(title=hostile, path=hostile, note=hostile)
def test_hostile_text_exports_and_verifies_in_every_format(
    title: str, path: str, note: str
) -> None:
    # the pipeline makes every text storable (surrogate escapes -> \xNN) before it gets here
    title, path, note = (storable_text(x) or "" for x in (title, path, note))
    f = finding(1, title=title)
    doc = new_document(f, "u1", "host-a")
    doc["evidence"]["files"][0]["path"] = path
    doc["note"] = note
    payload0 = make_payload(0, "genesis", iso(T0), "host-a", "h|=\n", info={"reason": "x"})
    h0 = link_hash(GENESIS_PREV, payload0)
    payload1 = make_payload(1, "incident", iso(T0), "host-a", "h|=\n", incident=doc)
    entries = [
        ChainEntry(0, "host-a", "genesis", iso(T0), None, payload0, GENESIS_PREV, h0),
        ChainEntry(1, "host-a", "incident", iso(T0), "u1", payload1, h0, link_hash(h0, payload1)),
    ]
    for fmt in ("jsonl", "ecs", "ocsf", "csv", "cef"):
        buf = io.StringIO(newline="")
        write(entries, fmt, buf)
        _got, report = verify_file(io.StringIO(buf.getvalue(), newline=""), fmt)
        assert report.ok, (fmt, report.problems)
        assert report.records == 2
        if fmt in ("ecs", "ocsf", "jsonl"):
            text = buf.getvalue()
            assert text.isascii()
            for line in text.split("\n")[:-1]:
                json.loads(line)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | hostile,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile, inner, max_size=3),
        max_leaves=20,
    )
)
def test_show_renders_whatever_evidence_a_row_holds(junk: object) -> None:
    from agent.incidents.render import render_incident

    doc = new_document(finding(1), "u1", "host-a")
    text = render_incident(doc)
    assert "Files (2)" in text and "up.example" in text
    for key in ("files", "flows", "lineage", "processes", "decisions"):
        broken = dict(doc)
        for value in ([{"parent": junk, "path": junk, "tags": junk}], [junk], junk):
            broken["evidence"] = {**doc["evidence"], key: value, "correlation": junk}
            render_incident(broken)
    render_incident({**doc, "evidence": junk})
