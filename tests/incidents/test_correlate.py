"""Correlation logic on synthetic event sequences (pure: no store, no threads)."""

from __future__ import annotations

import json
from dataclasses import replace

from agent.events import (
    Action,
    ByteSource,
    Channel,
    CloseReason,
    DestClass,
    FileAction,
    Protocol,
    Severity,
    Tag,
)
from agent.incidents.ancestry import Ancestry, read_ppid
from agent.incidents.correlate import CorrelationCore
from agent.incidents.model import IncidentFinding
from tests.incidents.helpers import (
    ARCHIVE,
    CAT,
    CKPT,
    CURL,
    EAR,
    OTHER,
    RECORD,
    SHELL,
    SIZE,
    TAR,
    archive,
    fev,
    flow,
    judge,
    story,
    weights,
)


def run(events: list, **kw: object) -> list[IncidentFinding]:
    kw.setdefault("judge_transfer", judge)  # the shipped rd-assets rules decide uploads
    core = CorrelationCore(**kw)  # type: ignore[arg-type]
    out: list[IncidentFinding] = []
    for e in events:
        out.extend(core.observe(e))
    return out


def test_the_whole_story_is_one_exfiltration_finding() -> None:
    findings = run(story())
    assert [f.kind for f in findings] == ["exfiltration"]
    f = findings[0]
    assert f.rule_id == "ear.model_weights" and f.severity == Severity.HIGH
    ev = f.evidence
    assert ev["correlation"]["method"] == "same_process"
    assert ev["roots"] == [CKPT]
    assert {"parent": CKPT, "child": ARCHIVE} in ev["lineage"]
    paths = {x["path"] for x in ev["files"]} | {x["dest_path"] for x in ev["files"]}
    assert "/data/ckpt/model.safetensors" in paths  # the original
    assert "/data/tmp/notes.bin" in paths  # the renamed copy
    assert "/data/tmp/x.tgz" in paths  # the archive
    assert ev["flows"][0]["sni"] == "up.example" and ev["flows"][0]["bytes_out"] == SIZE + 30_000
    assert any(p["exe"] == "/usr/bin/curl" for p in ev["processes"])
    assert "x.tgz" in f.title and "up.example" in f.title


def test_child_of_the_reader_uploading_is_the_same_story() -> None:
    child = CURL.__class__(pid=301, exe="/usr/bin/curl", ppid=200)  # child of tar
    events = [
        fev(FileAction.READ, "/d/x.tgz", 0, archive(), TAR),
        flow(1, 5, SIZE, process=child),
    ]
    findings = run(events)
    assert len(findings) == 1
    assert findings[0].evidence["correlation"]["method"] == "child_process"


def test_unrelated_process_makes_no_incident() -> None:
    events = [
        fev(FileAction.READ, "/d/x.tgz", 0, archive(), TAR),
        flow(1, 5, SIZE, process=OTHER),
    ]
    assert run(events) == []


def test_bytes_not_comparable_make_no_incident() -> None:
    events = [fev(FileAction.READ, "/d/x.tgz", 0, archive(), CURL), flow(1, 5, SIZE // 10)]
    assert run(events) == []
    assert run(events, byte_tolerance=0.95) != []


def test_outside_the_window_makes_no_incident() -> None:
    events = [fev(FileAction.READ, "/d/x.tgz", 0, archive(), CURL), flow(1000, 1010, SIZE)]
    assert run(events, window=900.0) == []
    assert len(run(events, window=2000.0)) == 1


def test_internal_and_approved_destinations_are_not_exfiltration() -> None:
    for cls in ("internal", "approved", "loopback"):
        events = [
            fev(FileAction.READ, "/d/x.tgz", 0, archive(), CURL),
            flow(1, 5, SIZE, dest_class=cls),
        ]
        assert run(events) == [], cls


def test_untagged_files_are_not_touches() -> None:
    plain = archive().__class__(sha256="ab" * 32, size=SIZE)
    events = [fev(FileAction.READ, "/d/photo.jpg", 0, plain, CURL), flow(1, 5, SIZE)]
    assert run(events) == []


def test_flow_before_the_file_event_still_correlates() -> None:
    events = [flow(0, 5, SIZE), fev(FileAction.READ, "/d/x.tgz", 1, archive(), CURL)]
    findings = run(events)
    assert [f.kind for f in findings] == ["exfiltration"]


def test_repeated_upload_has_the_same_dedup_key() -> None:
    events = [*story(), flow(40, 60, SIZE + 30_000, decisions=(EAR,))]  # the same again
    findings = run(events)
    assert len(findings) == 2
    assert findings[0].dedup_key == findings[1].dedup_key


def test_other_destination_is_another_story() -> None:
    events = [
        *story(),
        fev(FileAction.READ, "/data/tmp/x.tgz", 30, archive(), CURL),
        flow(30, 40, SIZE, sni="other.example"),
    ]
    findings = run(events)
    assert len(findings) == 2 and findings[0].dedup_key != findings[1].dedup_key


def test_removable_copy_is_its_own_incident_kind() -> None:
    events = [
        fev(FileAction.WRITTEN, "/data/m.safetensors", 0, weights(), SHELL),
        fev(
            FileAction.WRITTEN,
            "/media/usb/m.safetensors",
            5,
            weights(),
            SHELL,
            Channel.REMOVABLE,
            (CAT,),
        ),
        fev(
            FileAction.WRITTEN,
            "/sync/Nutstore/m.safetensors",
            6,
            weights(),
            SHELL,
            Channel.CLOUD_SYNC,
            (CAT,),
        ),
    ]
    findings = run(events)
    assert [f.kind for f in findings] == ["removable_copy", "cloud_sync_copy"]
    assert findings[0].rule_id == "cn.ai.weights"
    assert findings[0].dedup_key != findings[1].dedup_key


def test_copy_without_alert_is_no_incident() -> None:
    events = [
        fev(FileAction.WRITTEN, "/media/usb/m", 5, weights(), SHELL, Channel.REMOVABLE, (RECORD,))
    ]
    assert run(events) == []


def test_alert_on_its_own_is_a_policy_alert_and_is_absorbed_by_the_story() -> None:
    events = [fev(FileAction.WRITTEN, "/data/tmp/x.tgz", 0, archive(), TAR, decisions=(CAT,))]
    events += [fev(FileAction.READ, "/data/tmp/x.tgz", 1, archive(), CURL), flow(2, 9, SIZE)]
    findings = run(events)
    assert [f.kind for f in findings] == ["policy_alert", "exfiltration"]
    assert findings[0].dedup_key in findings[1].supersedes
    # named after the rule that alerts on the transfer; the file's own rule is evidence
    assert findings[1].rule_id == "rd-assets-model-weights-out"
    assert findings[1].pack == "rd-assets" and findings[1].severity == Severity.MEDIUM
    assert any(d["rule_id"] == "cn.ai.weights" for d in findings[1].evidence["decisions"])


def test_an_upload_no_rule_alerts_on_is_no_story() -> None:
    """The correlator has no severity of its own: matched bytes alone open nothing."""
    events = [fev(FileAction.READ, "/data/tmp/x.tgz", 1, archive(), CURL), flow(2, 9, SIZE)]
    assert run(events, judge_transfer=None) == []
    # to an internal destination rd-assets does not alert either
    assert run([*events[:1], flow(2, 9, SIZE, dest_class="internal")]) == []
    # a policy that records the transfer (no alert) opens nothing
    record = EAR.__class__("x.record", "p", Severity.HIGH, "record", "v1")
    assert run(events, judge_transfer=lambda a, f, e: [record]) == []


def test_upload_severity_comes_from_the_pack() -> None:
    """rd-assets-tagged-upload*: an archive of unknown content, by destination and size."""
    plain = archive().__class__(ARCHIVE, SIZE, "zip", (Tag("archive", "zip, 3 members"),))
    read = fev(FileAction.READ, "/d/x.zip", 0, plain, CURL)
    foreign = run([read, flow(1, 5, SIZE)])
    unknown = run([read, flow(1, 5, SIZE, dest_class="unknown")])
    assert [(f.rule_id, f.severity) for f in foreign] == [
        ("rd-assets-tagged-upload-large", Severity.HIGH)
    ]
    assert [(f.rule_id, f.severity) for f in unknown] == [
        ("rd-assets-tagged-upload", Severity.MEDIUM)
    ]


def test_flow_alert_without_story_is_a_policy_alert() -> None:
    findings = run([flow(0, 5, 1234, decisions=(EAR,))])
    assert [f.kind for f in findings] == ["policy_alert"]
    assert findings[0].evidence["flows"][0]["bytes_out"] == 1234


def test_any_alert_opens_an_incident_and_records_do_not() -> None:
    """No threshold here: a pack that lowers a rule to low still alerts; record is silent."""
    low = EAR.__class__("x", "p", Severity.LOW, "alert", "v1")
    (f,) = run([flow(0, 5, 1234, decisions=(low,))])
    assert f.severity == Severity.LOW and f.rule_id == "x"
    assert run([flow(0, 5, 1234, decisions=(RECORD,))]) == []


def test_unattributed_flow_matches_on_size_and_time() -> None:
    events = [
        fev(FileAction.WRITTEN, "/d/x.tgz", 0, archive(), None),
        flow(1, 5, SIZE, process=None),
    ]
    findings = run(events)
    assert findings and findings[0].evidence["correlation"]["method"] == "size_and_time"
    small = archive(size=1000)
    assert (
        run([fev(FileAction.WRITTEN, "/d/x.tgz", 0, small, None), flow(1, 5, 1000, process=None)])
        == []
    )


def test_unattributed_touch_does_not_match_a_known_process_when_attribution_works() -> None:
    events = [
        fev(FileAction.READ, "/d/other", 0, weights("cd" * 32), OTHER),  # fanotify works here
        fev(FileAction.WRITTEN, "/d/x.tgz", 1, archive(), None),
        flow(2, 5, SIZE, process=OTHER.__class__(pid=777, ppid=1)),
    ]
    assert run(events) == []


def test_sum_of_several_artefacts_counts() -> None:
    a = weights("aa" * 32, size=SIZE)
    b = weights("bb" * 32, size=SIZE)
    events = [
        fev(FileAction.READ, "/d/a", 0, a, CURL),
        fev(FileAction.READ, "/d/b", 1, b, CURL),
        flow(2, 9, 2 * SIZE + 5000),
    ]
    findings = run(events, byte_tolerance=0.1)
    assert len(findings) == 1
    assert findings[0].evidence["correlation"]["file_bytes"] == 2 * SIZE


def test_lineage_from_the_store_is_followed() -> None:
    grand = "ee" * 32
    core = CorrelationCore(
        parents_of=lambda sha: [grand] if sha == CKPT else [], judge_transfer=judge
    )
    out: list[IncidentFinding] = []
    for e in [fev(FileAction.READ, "/d/x.tgz", 0, archive(), CURL), flow(1, 5, SIZE)]:
        out.extend(core.observe(e))
    assert out[0].evidence["roots"] == [grand]


def test_lineage_cycles_terminate() -> None:
    core = CorrelationCore(parents_of=lambda sha: ["11" * 32] if sha == "22" * 32 else ["22" * 32])
    nodes, edges = core.lineage(["22" * 32])
    assert set(nodes) == {"11" * 32, "22" * 32} and len(edges) == 2


def test_flow_events_are_plain_flows() -> None:
    """A flow leaves correlation as a plain document, whatever types its record carries.

    The evidence is what the hash chain signs and every export writes: builtin values
    only, so a `StrEnum` in a `Flow` or `Decision` never reaches a payload as itself.
    """
    f = replace(
        flow(0, 1, 5000, dest_class=DestClass.INTERNAL, decisions=(EAR,)),
        protocol=Protocol.TCP,
        byte_source=ByteSource.TCP_INFO,
        close_reason=CloseReason.FIN,
        decisions=(replace(EAR, action=Action.ALERT),),
    )
    (finding,) = CorrelationCore().observe(f)
    assert finding.kind == "policy_alert"  # an internal destination: no upload story
    (doc,) = finding.evidence["flows"]
    assert doc["uid"] == f.uid and doc["bytes_out"] == 5000
    assert (doc["protocol"], doc["byte_source"], doc["dest_class"]) == (
        "tcp",
        "tcp_info",
        "internal",
    )

    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(type(k) is str and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return type(v) in (str, int, float, bool, type(None))

    assert plain(dict(finding.evidence)), finding.evidence
    assert json.loads(json.dumps(dict(finding.evidence))) == finding.evidence


def test_ancestry_reads_proc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_bytes(b"42 (we ird) name)) S 7 42 42 0 -1")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes(b"7 (init) S 1 7 7")
    assert read_ppid(tmp_path, 42) == 7
    assert read_ppid(tmp_path, 999) is None
    anc = Ancestry(proc=tmp_path)
    assert anc.ancestors(42) == [7, 1]
    import os

    real = Ancestry()
    assert os.getppid() in real.ancestors(os.getpid())


def test_policy_on_the_transfer_names_the_incident() -> None:
    ear_alert = EAR.__class__(
        "us-ear-model-weights-abroad", "us-ear", Severity.HIGH, "alert", "v2", "4E091"
    )
    seen: list[tuple[str | None, str]] = []

    def ear(artefact, flow, fe):  # type: ignore[no-untyped-def]
        seen.append((artefact.sha256, fe.current_path))
        return [ear_alert] if artefact.sha256 == CKPT else []

    events = [fev(FileAction.WRITTEN, "/data/tmp/x.tgz", 0, archive(), TAR, decisions=(CAT,))]
    events += [
        fev(FileAction.WRITTEN, "/data/m.safetensors", -5, weights(), SHELL),
        fev(FileAction.READ, "/data/tmp/x.tgz", 1, archive(), CURL),
        flow(2, 9, SIZE),
    ]
    findings = run(events, judge_transfer=ear)
    exfil = findings[-1]
    assert exfil.rule_id == "us-ear-model-weights-abroad" and exfil.pack == "us-ear"
    assert {sha for sha, _p in seen} == {CKPT, ARCHIVE}  # each artefact judged once
    assert any(d["rule_id"] == "us-ear-model-weights-abroad" for d in exfil.evidence["decisions"])


def test_created_then_written_on_removable_is_one_copy_story() -> None:
    events = [
        fev(FileAction.CREATED, "/media/usb/m", 0, weights(), SHELL, Channel.REMOVABLE, (CAT,)),
        fev(FileAction.WRITTEN, "/media/usb/m", 1, weights(), SHELL, Channel.REMOVABLE, (CAT,)),
    ]
    findings = run(events)
    assert [f.kind for f in findings] == ["removable_copy", "removable_copy"]
    assert findings[0].dedup_key == findings[1].dedup_key


def test_store_lineage_is_asked_once_per_artefact() -> None:
    asked: list[str] = []

    def parents_of(sha: str) -> list[str]:
        asked.append(sha)
        return []

    core = CorrelationCore(parents_of=parents_of)
    for _ in range(3):
        core.lineage([CKPT])
    assert asked == [CKPT]


def test_uploaders_read_arriving_after_its_flow_refines_the_same_story() -> None:
    """Sensors deliver in no fixed order: the flow may come before the uploader's read.

    The flow first matches the parent shell's copies (child_process); the late read by
    the uploader itself is a closer match of the same story and must add the archive.
    """
    from agent.incidents.model import merge, new_document

    events = [*story()[:-2], story()[-1], story()[-2]]  # flow, then curl's read of x.tgz
    findings = run(events)
    exfil = [f for f in findings if f.kind == "exfiltration"]
    assert len(exfil) == 2
    first, closer = exfil
    assert first.evidence["correlation"]["method"] == "child_process"
    assert closer.evidence["correlation"]["method"] == "same_process"
    assert first.dedup_key == closer.dedup_key  # one incident: the log merges them
    doc = new_document(first, "u1", "h1")
    merged = merge(doc, closer)
    assert merged is not None
    paths = {x["path"] for x in merged["evidence"]["files"]}
    assert "/data/tmp/x.tgz" in paths
    assert merged["evidence"]["correlation"]["method"] == "same_process"
    assert merged["bytes_out"] == doc["bytes_out"]  # the same flow is not counted twice
    assert merge(merged, closer) is None  # re-delivery changes nothing
