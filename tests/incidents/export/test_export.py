"""Each export format read back by a parser for that format, and verified on its own."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.incidents.export import FORMATS, ExportFileError, verify_file
from agent.incidents.export.cef import parse_extension, split_header
from agent.incidents.export.csv import DANGEROUS
from agent.incidents.log import IncidentLog, set_status
from agent.incidents.queries import chain_entries, list_incidents
from tests.incidents.export.exporting import export_lines, export_text, ocsf_errors
from tests.incidents.helpers import ARCHIVE, at, finding

ALL = sorted(FORMATS)


@pytest.fixture
def log_store(sqlite_store: Engine) -> Engine:
    log = IncidentLog(sqlite_store, "host-a", "lab-ws-1", checkpoint_every=4)
    log.start()
    for i in range(5):
        log.record(finding(i, key=f"k{i}", t=i * 60, severity=["low", "high"][i % 2]))
    log.record(finding(9, key="k0", t=30))  # an update
    doc = list_incidents(sqlite_store)[-1]
    set_status(sqlite_store, doc["id"], "acknowledged", "carol", 'note with "quotes", = and |')
    log.checkpoint("clean stop")
    return sqlite_store


@pytest.mark.parametrize("fmt", ALL)
def test_export_verifies_on_its_own(log_store: Engine, fmt: str) -> None:
    text = export_text(log_store, fmt)
    detected, report = verify_file(io.StringIO(text, newline=""))
    assert detected == fmt
    assert report.ok, report.problems
    assert report.records == len(list(chain_entries(log_store)))


@pytest.mark.parametrize("fmt", ["jsonl", "ecs", "ocsf", "cef"])
def test_an_edited_field_in_a_line_is_found(log_store: Engine, fmt: str) -> None:
    lines = export_lines(export_text(log_store, fmt))
    target = next(i for i, ln in enumerate(lines) if "203.0.113.9" in ln)
    lines[target] = lines[target].replace("203.0.113.9", "203.0.113.8", 1)
    _fmt, report = verify_file(io.StringIO("\n".join(lines) + "\n"))
    assert report.first is not None and report.first.seq == target


@pytest.mark.parametrize("fmt", ["jsonl", "ecs", "ocsf", "cef"])
def test_a_deleted_or_swapped_line_is_found(log_store: Engine, fmt: str) -> None:
    lines = export_lines(export_text(log_store, fmt))
    deleted = lines[:3] + lines[4:]
    _f, report = verify_file(io.StringIO("\n".join(deleted) + "\n"))
    assert report.first is not None and report.first.seq == 4 and "missing" in report.first.why
    swapped = [*lines[:3], lines[4], lines[3], *lines[5:]]
    _f, report = verify_file(io.StringIO("\n".join(swapped) + "\n"))
    assert report.first is not None and report.first.seq == 4


def test_csv_edit_and_delete_are_found(log_store: Engine) -> None:
    rows = list(csv.reader(io.StringIO(export_text(log_store, "csv"), newline="")))
    rows[3][12] = "/tmp/innocent"  # file_path of the record at seq 2
    out = io.StringIO(newline="")
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    _f, report = verify_file(io.StringIO(out.getvalue(), newline=""))
    assert report.first is not None and report.first.seq == 2 and "edited" in report.first.why


def test_filtered_export_keeps_the_chain_with_stubs(log_store: Engine) -> None:
    text = export_text(log_store, "jsonl", min_severity="high")
    docs = [json.loads(ln) for ln in export_lines(text)]
    stubs = [d for d in docs if d.get("stub")]
    full = [d for d in docs if not d.get("stub") and d["incident"]]
    assert stubs and full
    assert all(d["incident"]["severity"] == "high" for d in full)
    assert all("incident" not in d for d in stubs)  # content withheld
    _f, report = verify_file(io.StringIO(text))
    assert report.ok, report.problems
    later = export_text(log_store, "jsonl", since=at(10**10))  # after every record
    assert later == ""


def test_ecs_fields_and_types(log_store: Engine) -> None:
    docs = [json.loads(ln) for ln in export_lines(export_text(log_store, "ecs"))]
    alerts = [d for d in docs if d["event"]["kind"] == "alert"]
    assert alerts and len(alerts) + 3 == len(docs)  # genesis + 2 checkpoints
    for d in alerts:
        assert isinstance(d["@timestamp"], str) and d["@timestamp"].endswith("+00:00")
        assert d["ecs"]["version"].startswith("8.")
        assert d["event"]["category"] == ["file", "network"]
        assert d["event"]["type"][0] in ("creation", "change")
        assert isinstance(d["event"]["severity"], int)
        assert isinstance(d["event"]["id"], str)
        assert d["file"]["hash"]["sha256"] == ARCHIVE
        assert isinstance(d["file"]["size"], int) and d["file"]["name"].endswith(".tgz")
        assert d["destination"]["ip"] == "203.0.113.9" and isinstance(d["destination"]["port"], int)
        assert d["destination"]["geo"]["country_iso_code"] == "US"
        assert d["tls"]["client"]["server_name"] == "up.example"
        assert isinstance(d["source"]["bytes"], int)
        assert d["process"]["pid"] == 300 and d["process"]["executable"] == "/usr/bin/curl"
        assert d["user"]["name"] == "alice" and d["user"]["id"] == "1000"
        assert d["rule"]["id"] == "ear.model_weights" and d["rule"]["ruleset"] == "us-ear"
        assert d["host"] == {"id": "host-a", "name": "lab-ws-1"}
        chain = d["egress"]["chain"]
        assert isinstance(chain["seq"], int) and len(chain["hash"]) == 64
        assert len(chain["prev_hash"]) == 64


def test_ocsf_fields_and_types(log_store: Engine) -> None:
    docs = [json.loads(ln) for ln in export_lines(export_text(log_store, "ocsf"))]
    for d in docs:
        for key in ("class_uid", "category_uid", "activity_id", "type_uid", "severity_id", "time"):
            assert isinstance(d[key], int), key
        assert d["type_uid"] == d["class_uid"] * 100 + d["activity_id"]
        assert d["metadata"]["product"]["name"] == "egress-agent"
        assert isinstance(d["metadata"]["version"], str)
        assert d["time"] > 1_700_000_000_000  # epoch milliseconds
    findings = [d for d in docs if d["class_uid"] == 2006]
    assert {d["activity_id"] for d in findings} == {1, 2}
    for d in findings:
        assert d["category_uid"] == 2 and 1 <= d["severity_id"] <= 5
        assert d["finding_info"]["uid"] and d["finding_info"]["title"]
        assert d["file"]["hashes"][0]["value"] == ARCHIVE
        assert d["dst_endpoint"]["hostname"] == "up.example"
        assert d["unmapped"]["traffic"]["bytes_out"] > 0
        assert d["actor"]["process"]["pid"] == 300
    logs = [d for d in docs if d["class_uid"] == 1008]
    assert len(logs) == 3 and all(d["category_uid"] == 1 for d in logs)


def test_csv_is_safe_and_reads_back(log_store: Engine) -> None:
    text = export_text(log_store, "csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    assert header[0] == "seq" and header[-1] == "payload"
    assert len(body) == len(list(chain_entries(log_store)))
    for row in body:
        assert len(row) == len(header)
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    titles = [r[header.index("title")] for r in body if r[header.index("title")]]
    assert titles and all("\n" in t for t in titles)  # embedded newline survives quoting
    paths = [r[header.index("file_path")] for r in body if r[header.index("file_path")]]
    assert paths[0].startswith("/data/=SUM(A1)|")
    assert all(not c.startswith(tuple(DANGEROUS[:-1])) for r in body for c in r)


def test_cef_header_fields_split_correctly(log_store: Engine) -> None:
    lines = export_lines(export_text(log_store, "cef"))
    for line in lines:
        header, ext = split_header(line)
        assert header[0] == "CEF:0" and header[1] == "egress-agent" and header[2] == "egress-agent"
        assert 0 <= int(header[6]) <= 10
        x = parse_extension(ext)
        assert x["cs5Label"] == "chainHash" and len(x["cs5"]) == 64
        assert int(x["cn1"]) >= 0
    incident = [ln for ln in lines if "ear.model_weights" in ln.split("|")[4]]
    assert incident
    h, ext = split_header(incident[0])
    assert "|" in h[5]  # the title's '|' is escaped in the header and comes back whole
    x = parse_extension(ext)
    assert x["dst"] == "203.0.113.9" and x["dhost"] == "up.example" and x["suser"] == "alice"
    assert x["filePath"].startswith("/data/=SUM(A1)|")
    assert json.loads(x["cs6"])["seq"] == int(x["cn1"])


def test_not_an_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportFileError):
        verify_file(io.StringIO("hello\n"))
    with pytest.raises(ExportFileError):
        verify_file(io.StringIO(""))
    with pytest.raises(ExportFileError):
        verify_file(io.StringIO('{"seq": "x"}\n'))


def test_ocsf_lines_validate_against_the_ocsf_schema(log_store: Engine) -> None:
    checked: set[int] = set()
    for line in export_lines(export_text(log_store, "ocsf")):
        doc = json.loads(line)
        errors = ocsf_errors(doc)
        assert not errors, (doc["class_uid"], errors)
        checked.add(doc["class_uid"])
    assert checked == {2006, 1008}
