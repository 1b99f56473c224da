"""Exports carry a flow's Community ID, known service and owning organisation (issue 16)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
from sqlalchemy import Engine

from agent.events import Flow
from agent.incidents.evidence import flow_doc
from agent.incidents.export import verify_file
from agent.incidents.export.cef import parse_extension, split_header
from tests.incidents.export.exporting import exported, ocsf_errors, with_incident
from tests.incidents.helpers import at, finding, flow

CID = "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


@pytest.fixture
def store(sqlite_store: Engine) -> Engine:
    # an upload to S3: the helper's flow abroad, to an address S3 serves from
    s3 = dataclasses.replace(
        flow(0, 5, 80_000_000, process=None, sni="mybucket.s3.us-east-1.amazonaws.com"),
        dst_ip="52.216.8.9",
        dest_org="AMAZON-02",
        service="Amazon S3",
        service_category="cloud_storage",
        community_id=CID,
    )
    f = finding(1)
    f.evidence["flows"] = [flow_doc(s3)]  # type: ignore[index]
    return with_incident(sqlite_store, f)


def test_evidence_keeps_the_fields() -> None:
    doc = flow_doc(
        Flow("tcp", "10.0.0.2", 1, "1.2.3.4", 443, at(0), at(1), service="GitHub", community_id=CID)
    )
    assert doc["service"] == "GitHub" and doc["community_id"] == CID
    assert doc["service_category"] is None and doc["dest_org"] is None


def test_ecs_has_network_community_id_org_and_service_labels(store: Engine) -> None:
    docs = [json.loads(ln) for ln in exported(store, "ecs")]
    (alert,) = [d for d in docs if d["event"]["kind"] == "alert"]
    assert alert["network"]["community_id"] == CID
    assert alert["destination"]["as"]["organization"]["name"] == "AMAZON-02"
    assert alert["labels"] == {"service": "Amazon S3", "service_category": "cloud_storage"}


def test_ocsf_and_csv_and_cef_carry_them_and_verify(store: Engine) -> None:
    (ocsf,) = [d for d in map(json.loads, exported(store, "ocsf")) if d["class_uid"] == 2006]
    assert ocsf["unmapped"]["network"] == {
        "community_id": CID,
        "service": "Amazon S3",
        "service_category": "cloud_storage",
    }
    assert ocsf["dst_endpoint"]["autonomous_system"] == {"name": "AMAZON-02"}
    rows = list(csv.DictReader(io.StringIO("\n".join(exported(store, "csv")))))
    (row,) = [r for r in rows if r["record_type"] == "incident"]
    assert (row["service"], row["service_category"], row["community_id"]) == (
        "Amazon S3",
        "cloud_storage",
        CID,
    )
    (cef,) = [ln for ln in exported(store, "cef") if "ear.model_weights" in ln]
    assert parse_extension(split_header(cef)[-1])["destinationServiceName"] == "Amazon S3"
    for fmt in ("ecs", "ocsf", "csv", "cef", "jsonl"):
        _fmt, report = verify_file(io.StringIO("\n".join(exported(store, fmt)) + "\n"))
        assert report.ok and report.incidents == 1, (fmt, report)


def test_ocsf_line_with_the_new_fields_validates(store: Engine) -> None:
    for line in exported(store, "ocsf"):
        assert not ocsf_errors(json.loads(line))
