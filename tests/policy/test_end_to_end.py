"""Real files through the real classifier into the shipped packs.

A Chinese DOCX and PDF on rare-earth solvent extraction copied to removable media, a CSV
of synthetic resident IDs uploaded abroad, a safetensors file above the configured
parameter threshold; and `policy explain` on them. Every file is generated here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.classify import classify_file
from agent.config import PoliciesSection
from agent.events import Channel, FileAction, FileEvent
from agent.policy import Policy, load_configured
from agent.policy.explain import example_upload
from tests.conftest import cli, write_config
from tests.policy.makefiles import (
    RARE_EARTH_ZH,
    make_docx,
    make_pdf,
    make_resident_csv,
    make_safetensors,
)


@pytest.fixture(scope="module")
def policy() -> Policy:
    p, issues = load_configured(PoliciesSection(model_parameter_threshold=100_000))
    assert p is not None, issues
    return p


def _on_usb(path: Path, policy: Policy, usb: Path) -> FileEvent:
    dest = usb / path.name
    dest.write_bytes(path.read_bytes())
    artefact = classify_file(dest, policy.categories)
    return FileEvent(FileAction.WRITTEN, str(dest), Channel.REMOVABLE, artefact=artefact)


@pytest.mark.parametrize("maker", [make_docx, make_pdf], ids=["docx", "pdf"])
def test_rare_earth_document_to_usb(tmp_path: Path, policy: Policy, maker: object) -> None:
    src = tmp_path / ("稀土萃取分离工艺" + (".docx" if maker is make_docx else ".pdf"))
    maker(src, RARE_EARTH_ZH)  # type: ignore[operator]
    usb = tmp_path / "media" / "usb0"
    usb.mkdir(parents=True)
    event = _on_usb(src, policy, usb)
    assert event.artefact is not None and "document" in event.artefact.kinds
    decisions = {d.rule_id: d for d in policy.decide_file(event)}
    d = decisions["cn-cat-prohibited-removable"]
    assert d.categories == ("CN-CAT-RE-REFINING",)
    assert d.severity == "critical" and d.action == "alert"
    assert "053302J" in d.reason and "稀土的提炼、加工、利用技术" in d.reason
    # the same file kept on the local disk decides nothing
    local = FileEvent(FileAction.WRITTEN, str(src), Channel.LOCAL, artefact=event.artefact)
    assert policy.decide_file(local) == []


def test_resident_id_csv_to_external_address(tmp_path: Path, policy: Policy) -> None:
    csv = make_resident_csv(tmp_path / "employees.csv", rows=300)
    artefact = classify_file(csv, policy.categories)
    assert "dataset" in artefact.kinds
    counts = {m.category: m.count for m in artefact.matches}
    assert counts.get("PI-PRC-RESIDENT-ID") == 300
    decisions = policy.decide_transfer(artefact, example_upload(artefact, datetime.now(UTC)))
    ids = {d.rule_id for d in decisions}
    assert "cn-pi-resident-ids-abroad" in ids
    assert "cn-pi-sensitive-assessment-abroad" not in ids  # 300 < 10 000
    d = next(d for d in decisions if d.rule_id == "cn-pi-resident-ids-abroad")
    assert d.pack == "cn-cross-border-data" and "PI-PRC-RESIDENT-ID" in d.reason
    # checksums matter: the same CSV with every check character broken is not PI
    broken = tmp_path / "broken.csv"
    lines = csv.read_text().splitlines()
    fixed = [lines[0]] + [_break_check(line) for line in lines[1:]]
    broken.write_text("\n".join(fixed) + "\n")
    art2 = classify_file(broken, policy.categories)
    assert "PI-PRC-RESIDENT-ID" not in {m.category for m in art2.matches}
    assert policy.decide_transfer(art2, example_upload(art2, datetime.now(UTC))) == []


def _break_check(line: str) -> str:
    name, rid, city = line.split(",")
    wrong = "0" if rid[-1] != "0" else "1"
    return f"{name},{rid[:-1]}{wrong},{city}"


def test_safetensors_above_threshold(tmp_path: Path, policy: Policy) -> None:
    big = make_safetensors(tmp_path / "big.safetensors", {"w1": [256, 256], "w2": [256, 256]})
    small = make_safetensors(tmp_path / "small.safetensors", {"w": [64, 64]})
    usb = tmp_path / "usb"
    usb.mkdir()
    ev = _on_usb(big, policy, usb)
    assert ev.artefact is not None
    assert {t.details.get("parameters") for t in ev.artefact.tags if t.kind == "model_weights"} == {
        131072
    }
    decisions = {d.rule_id: d for d in policy.decide_file(ev)}
    d = decisions["us-ear-model-weights-copied-out"]
    assert d.pack == "us-ear" and d.action == "record"  # 4E091 is not enforced
    assert "recorded only" in d.reason
    assert "us-ear-model-weights-copied-out" not in {
        x.rule_id for x in policy.decide_file(_on_usb(small, policy, usb))
    }
    abroad = policy.decide_transfer(ev.artefact, example_upload(ev.artefact, datetime.now(UTC)))
    assert "us-ear-model-weights-abroad" in {x.rule_id for x in abroad}


def test_explain_cli(tmp_path: Path) -> None:
    doc = make_docx(tmp_path / "process.docx", RARE_EARTH_ZH)
    cfg = write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})
    res = cli("policy", "explain", "--json", str(doc), config=cfg)
    report = json.loads(res.stdout)
    cats = {c["code"]: c for c in report["categories"]}
    assert cats["CN-CAT-RE-REFINING"]["present"]
    assert cats["CN-CAT-RE-REFINING"]["catalogue_code"].startswith("053302J")
    by_scenario = {
        s["scenario"]: {d["rule_id"] for d in s["decisions"]} for s in report["scenarios"]
    }
    assert by_scenario["copy to local"] == set()
    assert "cn-cat-prohibited-removable" in by_scenario["copy to removable"]
    assert "cn-cat-prohibited-cloud-sync" in by_scenario["copy to cloud_sync"]
    assert "cn-cat-prohibited-network-share" in by_scenario["copy to network_share"]
    assert "cn-cat-transfer-foreign" in by_scenario["upload to a foreign destination"]
    text = cli("policy", "explain", str(doc), config=cfg).stdout
    assert "CN-CAT-RE-REFINING" in text and "critical alert  cn-cat-prohibited-removable" in text


def test_explain_threshold_from_config(tmp_path: Path) -> None:
    weights = make_safetensors(tmp_path / "m.safetensors", {"w": [100, 100]})
    for threshold, fires in ((5_000, True), (50_000, False)):
        cfg = write_config(
            tmp_path / f"agent-{threshold}.yaml",
            {"policies": {"model_parameter_threshold": threshold}},
        )
        report = json.loads(cli("policy", "explain", "--json", str(weights), config=cfg).stdout)
        usb = next(s for s in report["scenarios"] if s["scenario"] == "copy to removable")
        assert (
            "us-ear-model-weights-copied-out" in {d["rule_id"] for d in usb["decisions"]}
        ) is fires


def test_generic_solvent_extraction_is_not_rare_earth(tmp_path: Path, policy: Policy) -> None:
    """A pharma SOP full of extraction terms, without rare-earth context, decides nothing."""
    sop = make_docx(
        tmp_path / "提取工艺SOP.docx",
        [
            "中药有效成分提取工艺规程：采用溶剂萃取法，以乙酸乙酯进行串级萃取，",
            "萃取分离后减压浓缩；溶剂萃取的相比为1:3，萃取分离温度40℃。",
        ],
    )
    usb = tmp_path / "usb"
    usb.mkdir()
    event = _on_usb(sop, policy, usb)
    assert event.artefact is not None
    assert "CN-CAT-RE-REFINING" in {m.category for m in event.artefact.matches}
    assert policy.decide_file(event) == []


def test_archive_of_tagged_files(tmp_path: Path, policy: Policy) -> None:
    import zipfile

    doc = make_docx(tmp_path / "工艺.docx", RARE_EARTH_ZH)
    csv = make_resident_csv(tmp_path / "staff.csv", rows=40)
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.write(doc, doc.name)
        z.write(csv, csv.name)
    usb = tmp_path / "usb"
    usb.mkdir()
    event = _on_usb(bundle, policy, usb)
    ids = {d.rule_id for d in policy.decide_file(event)}
    assert {"cn-cat-prohibited-removable", "cn-pi-resident-ids-copied-out"} <= ids


def test_example_site_pack_checks(tmp_path: Path) -> None:
    from agent.policy import SHIPPED_DIR

    res = cli("policy", "check", str(SHIPPED_DIR / "examples" / "site-lab.yaml"))
    assert res.stdout.startswith("ok: 6 pack(s)")  # the 5 shipped and the example
