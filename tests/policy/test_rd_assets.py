"""The rd-assets pack with the default configuration: real files, real classifier, real policy.

Issue 13's "Done when": a real model checkpoint copied to a removable path, a private key
uploaded to a foreign address and a source archive put in a cloud-sync folder each open
an incident by default, naming the pack rule; a site pack lowers or switches off each.
Every file is generated here (safetensors with a MiniLM-like layout, an RSA key from
`cryptography`, a tar.gz of Python modules, a 60 000-row CSV, an ASCII STL) and goes
through `Classifier.classify_path`, `Policy.decide_*` and the `CorrelationCore`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from safetensors.numpy import save_file

from agent.classify.classifier import Classifier
from agent.classify.source import git_bundle_tags
from agent.config import ClassifySection, PoliciesSection
from agent.events import (
    Artefact,
    Channel,
    Decision,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
    Severity,
)
from agent.incidents.correlate import CorrelationCore
from agent.incidents.model import IncidentFinding
from agent.policy import Policy, load_configured

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
USER = ProcessInfo(pid=4100, exe="/bin/cp", cmdline="cp", uid=1000, user="alice", ppid=1)
CURL = ProcessInfo(pid=4200, exe="/usr/bin/curl", cmdline="curl -T", uid=1000, user="alice", ppid=1)

# a site that tunes the shipped pack: one rule lowered, one switched off, one recorded
SITE_TUNING = """\
pack:
  id: site-rd
  name: Site tuning of rd-assets
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources: [{title: site procedure}]
overrides:
  - rule: rd-assets-model-weights-out
    severity: low
  - rule: rd-assets-secret-key-out
    enabled: false
  - rule: rd-assets-source-out
    action: record
"""


# --- real files -------------------------------------------------------------------------
def minilm_checkpoint(path: Path) -> Path:
    """A safetensors file laid out like all-MiniLM-L6 (vocab 30522 x 384, 6 layers), f16."""
    d, ff = 384, 1536
    tensors = {"embeddings.word_embeddings.weight": np.zeros((30522, d), np.float16)}
    tensors["embeddings.position_embeddings.weight"] = np.zeros((512, d), np.float16)
    for i in range(6):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            tensors[f"{p}attention.self.{name}.weight"] = np.zeros((d, d), np.float16)
        tensors[f"{p}attention.output.dense.weight"] = np.zeros((d, d), np.float16)
        tensors[f"{p}intermediate.dense.weight"] = np.zeros((ff, d), np.float16)
        tensors[f"{p}output.dense.weight"] = np.zeros((d, ff), np.float16)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def private_key(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


def source_archive(path: Path, modules: int = 12) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(modules):
            body = "".join(
                f"def handler_{i}_{j}(request):\n    return {{'id': {j}, 'ok': True}}\n\n"
                for j in range(30)
            )
            data = f'"""Module {i} of the service."""\n\nimport json\n\n{body}'.encode()
            info = tarfile.TarInfo(f"service/pkg/mod_{i}.py")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def dataset_csv(path: Path, rows: int = 60_000) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "sensor_a", "sensor_b", "label"])
        for i in range(rows):
            w.writerow([i, round(i * 0.37 % 11, 3), i % 97, "ok" if i % 5 else "fault"])
    return path


def git_bundle(path: Path, work: Path) -> Path:
    """`git bundle create --all` of a small repository of Python modules."""
    work.mkdir()
    for i in range(3):
        (work / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n")
    git = ["git", "-C", str(work), "-c", "user.email=t@example", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    subprocess.run([*git, "bundle", "create", "-q", str(path), "--all"], check=True)
    return path


def stl_part(path: Path) -> Path:
    facet = (
        "facet normal 0 0 1\n outer loop\n  vertex 0 0 0\n  vertex 1 0 0\n"
        "  vertex 0 1 0\n endloop\nendfacet\n"
    )
    path.write_text("solid bracket\n" + facet * 200 + "endsolid bracket\n")
    return path


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy() -> Policy:
    """Exactly what a fresh install loads: the shipped packs, default configuration."""
    p, issues = load_configured(PoliciesSection())
    assert p is not None, issues
    assert "rd-assets" in {x.id for x in p.packs if x.enabled}
    return p


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rd")
    return {
        "weights": minilm_checkpoint(d / "model.safetensors"),
        "key": private_key(d / "id_rsa"),
        "source": source_archive(d / "service-src.tar.gz"),
        "dataset": dataset_csv(d / "sensor-log.csv"),
        "cad": stl_part(d / "bracket.stl"),
        "bundle": git_bundle(d / "service.bundle", d / "repo"),
    }


@pytest.fixture(scope="module")
def artefacts(files: dict[str, Path], policy: Policy) -> Iterator[dict[str, Artefact]]:
    clf = Classifier(ClassifySection(use_magika=False), categories=lambda: policy.categories)
    try:
        yield {name: clf.classify_path(str(p)) for name, p in files.items()}
    finally:
        clf.close()


def copied(path: Path, artefact: Artefact, channel: Channel, t: float = 0.0) -> FileEvent:
    return FileEvent(
        FileAction.WRITTEN,
        f"/media/usb/{path.name}" if channel == Channel.REMOVABLE else f"/sync/{path.name}",
        channel,
        size=artefact.size,
        process=USER,
        time=T0 + timedelta(seconds=t),
        artefact=artefact,
    )


def foreign_flow(size: int, t: float = 5.0) -> Flow:
    return Flow(
        "tcp",
        "10.1.2.3",
        51000,
        "203.0.113.50",
        443,
        T0 + timedelta(seconds=t),
        T0 + timedelta(seconds=t + 2),
        bytes_out=size + size // 20,  # TLS records around the file
        dest_class="foreign",
        country="US",
        sni="paste.example.net",
        name="paste.example.net",
        process=CURL,
    )


def rd(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.pack == "rd-assets"]


def decided(e: FileEvent | Flow, policy: Policy) -> FileEvent | Flow:
    """What the policy stage does to an event before the correlator sees it."""
    found = policy.decide_file(e) if isinstance(e, FileEvent) else policy.decide_flow(e)
    return dataclasses.replace(e, decisions=tuple(found))


def correlate(events: list[FileEvent | Flow], policy: Policy) -> list[IncidentFinding]:
    core = CorrelationCore(judge_transfer=policy.decide_transfer)
    out: list[IncidentFinding] = []
    for e in events:
        out.extend(core.observe(decided(e, policy)))
    return out


# --- what the classifier saw ----------------------------------------------------------------
def test_the_real_files_are_classified_as_rd_assets(artefacts: dict[str, Artefact]) -> None:
    w = artefacts["weights"]
    (tag,) = [t for t in w.tags if t.kind == "model_weights"]
    assert tag.details["format"] == "safetensors"
    assert 15_000_000 < tag.details["parameters"] < 100_000_000  # MiniLM-sized
    assert [t.details["type"] for t in artefacts["key"].tags] == ["private_key"]
    assert {"archive", "source_code"} <= set(artefacts["source"].kinds)
    (ds,) = artefacts["dataset"].tags
    assert ds.kind == "dataset" and ds.details["rows"] >= 50_000
    assert artefacts["cad"].kinds == ("engineering",)
    b = {t.kind: t.details for t in artefacts["bundle"].tags}
    assert b["archive"]["format"] == "git_bundle" and b["archive"]["refs"] >= 1
    assert len(b["source_code"]["git_commit"]) == 40


def test_a_git_bundle_header_is_read_within_the_head() -> None:
    """Only the first 64 KiB are looked at: a hostile header is bounded, not an error."""
    oid = "ab" * 20
    head = b"# v3 git bundle\n@object-format=sha1\n-" + oid.encode() + b" x\n"
    head += b"".join(f"{oid} refs/tags/t{i}\n".encode() for i in range(2000))[: 64 * 1024]
    archive, code = git_bundle_tags(head)
    assert archive.details["format"] == "git_bundle" and "header past 64 KiB" in archive.evidence
    assert 0 < archive.details["refs"] < 2000 and code.details["git_commit"] == oid
    assert git_bundle_tags(b"# v2 git bundle\n\nPACK")[0].details["refs"] == 0


# --- decisions by default ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "channel", "rule", "severity"),
    [
        ("weights", Channel.REMOVABLE, "rd-assets-model-weights-out", Severity.MEDIUM),
        ("source", Channel.CLOUD_SYNC, "rd-assets-source-out", Severity.MEDIUM),
        ("key", Channel.REMOVABLE, "rd-assets-secret-key-out", Severity.HIGH),
        ("dataset", Channel.REMOVABLE, "rd-assets-dataset-out", Severity.MEDIUM),
        ("cad", Channel.CLOUD_SYNC, "rd-assets-cad-out", Severity.MEDIUM),
        ("bundle", Channel.REMOVABLE, "rd-assets-source-out", Severity.MEDIUM),
    ],
)
def test_a_copy_out_alerts_naming_the_rule(
    name: str,
    channel: Channel,
    rule: str,
    severity: Severity,
    files: dict[str, Path],
    artefacts: dict[str, Artefact],
    policy: Policy,
) -> None:
    e = copied(files[name], artefacts[name], channel)
    (d,) = rd(policy.decide_file(e))  # one decision per asset class: the tiers exclude
    assert (d.rule_id, d.action, d.severity) == (rule, "alert", severity)
    local = FileEvent(FileAction.WRITTEN, "/home/a/x", Channel.LOCAL, artefact=artefacts[name])
    assert rd(policy.decide_file(local)) == []
    share = FileEvent(
        FileAction.WRITTEN, "/mnt/share/x", Channel.NETWORK_SHARE, artefact=artefacts[name]
    )
    assert [(x.rule_id, x.action) for x in rd(policy.decide_file(share))] == [
        ("rd-assets-network-share", "record")
    ]


def test_a_private_key_uploaded_abroad_alerts(
    files: dict[str, Path], artefacts: dict[str, Artefact], policy: Policy
) -> None:
    key = artefacts["key"]
    fe = FileEvent(FileAction.READ, str(files["key"]), artefact=key, process=CURL, time=T0)
    (d,) = rd(policy.decide_transfer(key, foreign_flow(key.size), fe))
    assert (d.rule_id, d.action, d.severity) == ("rd-assets-secret-key-out", "alert", "high")
    internal = dataclasses.replace(foreign_flow(key.size), dest_class="internal")
    assert rd(policy.decide_transfer(key, internal, fe)) == []


# --- incidents by default -----------------------------------------------------------------------
def test_each_done_when_case_opens_one_incident_by_default(
    files: dict[str, Path], artefacts: dict[str, Artefact], policy: Policy
) -> None:
    w, key, src = artefacts["weights"], artefacts["key"], artefacts["source"]
    usb = correlate([copied(files["weights"], w, Channel.REMOVABLE)], policy)
    assert [(f.kind, f.rule_id, f.pack) for f in usb] == [
        ("removable_copy", "rd-assets-model-weights-out", "rd-assets")
    ]
    sync = correlate([copied(files["source"], src, Channel.CLOUD_SYNC)], policy)
    assert [(f.kind, f.rule_id) for f in sync] == [("cloud_sync_copy", "rd-assets-source-out")]
    read = FileEvent(
        FileAction.READ, str(files["key"]), size=key.size, process=CURL, time=T0, artefact=key
    )
    up = correlate([read, foreign_flow(key.size)], policy)
    assert [(f.kind, f.rule_id, f.severity) for f in up] == [
        ("exfiltration", "rd-assets-secret-key-out", Severity.HIGH)
    ]
    assert up[0].evidence["correlation"]["method"] == "same_process"


def test_a_site_pack_lowers_or_switches_off_each(
    tmp_path: Path, files: dict[str, Path], artefacts: dict[str, Artefact]
) -> None:
    (tmp_path / "site.yaml").write_text(SITE_TUNING)
    site, issues = load_configured(PoliciesSection(paths=[tmp_path / "site.yaml"]))
    assert site is not None, issues
    w, key, src = artefacts["weights"], artefacts["key"], artefacts["source"]
    # lowered: still an alert, now low
    usb = correlate([copied(files["weights"], w, Channel.REMOVABLE)], site)
    assert [(f.rule_id, f.severity) for f in usb] == [("rd-assets-model-weights-out", "low")]
    # recorded: a decision, no incident
    e = copied(files["source"], src, Channel.CLOUD_SYNC)
    assert [(d.rule_id, d.action) for d in rd(site.decide_file(e))] == [
        ("rd-assets-source-out", "record")
    ]
    assert correlate([e], site) == []
    # switched off: no decision, no incident
    read = FileEvent(
        FileAction.READ, str(files["key"]), size=key.size, process=CURL, time=T0, artefact=key
    )
    assert rd(site.decide_transfer(key, foreign_flow(key.size), read)) == []
    assert correlate([read, foreign_flow(key.size)], site) == []


def test_the_whole_pack_off_and_thresholds_from_the_config(
    files: dict[str, Path], artefacts: dict[str, Artefact]
) -> None:
    off, _ = load_configured(PoliciesSection(disabled=["rd-assets"]))
    assert off is not None
    e = copied(files["dataset"], artefacts["dataset"], Channel.REMOVABLE)
    assert rd(off.decide_file(e)) == []
    strict, _ = load_configured(PoliciesSection(parameters={"dataset_min_rows": 100_000}))
    assert strict is not None
    assert rd(strict.decide_file(e)) == []  # 60 000 rows under the site's threshold
    tiers, _ = load_configured(PoliciesSection(parameters={"weights_high_parameters": 10**7}))
    assert tiers is not None
    w = copied(files["weights"], artefacts["weights"], Channel.REMOVABLE)
    assert [(d.rule_id, d.severity) for d in rd(tiers.decide_file(w))] == [
        ("rd-assets-model-weights-out-large", "high")
    ]


def test_cut_short_classification_on_a_leaving_channel_is_recorded(policy: Policy) -> None:
    busy = Artefact(sha256=None, size=6_000_000_000, skipped="busy")
    e = FileEvent(FileAction.WRITTEN, "/media/usb/big.bin", Channel.REMOVABLE, artefact=busy)
    assert [(d.rule_id, d.action, d.severity) for d in rd(policy.decide_file(e))] == [
        ("rd-assets-unclassified-leaving", "record", "medium")
    ]


def test_a_transfer_decision_is_made_and_counted_once(
    files: dict[str, Path], artefacts: dict[str, Artefact], policy: Policy
) -> None:
    """A story refined by a later, closer match reuses its decisions (the service counts
    each call of the judge in egress_agent_decisions_total)."""
    src = artefacts["source"]
    calls: Counter[tuple[str, str | None]] = Counter()

    def judge(a: Artefact, f: Flow, fe: FileEvent) -> list[Decision]:
        calls[(f.uid, a.sha256)] += 1
        return policy.decide_transfer(a, f, fe)

    shell = ProcessInfo(pid=4000, exe="/bin/bash", uid=1000, user="alice", ppid=1)
    child = ProcessInfo(pid=4201, exe="/usr/bin/curl", uid=1000, user="alice", ppid=4000)
    flow = dataclasses.replace(foreign_flow(src.size), process=child)
    core = CorrelationCore(judge_transfer=judge)
    out: list[IncidentFinding] = []
    written = FileEvent(
        FileAction.WRITTEN, "/tmp/s.tgz", size=src.size, process=shell, time=T0, artefact=src
    )
    late_read = FileEvent(
        FileAction.READ,
        "/tmp/s.tgz",
        size=src.size,
        process=child,
        time=T0 + timedelta(seconds=6),
        artefact=src,
    )
    for e in (written, flow, late_read):
        out.extend(core.observe(e))
    methods = [f.evidence["correlation"]["method"] for f in out]
    assert methods == ["child_process", "same_process"]  # the story, then its refinement
    assert {f.rule_id for f in out} == {"rd-assets-source-out"}
    assert list(calls.values()) == [1]
