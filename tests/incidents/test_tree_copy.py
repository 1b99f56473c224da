"""Whole-tree copies are one story: `cp -r` of a real 500-file repository, each copied file
classified by the real classifier, judged by the shipped packs, told by the correlator."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from agent.classify.classifier import Classifier
from agent.config import ClassifySection, PoliciesSection
from agent.events import Channel, FileAction, FileEvent, ProcessInfo
from agent.incidents.correlate import CorrelationCore
from agent.incidents.model import new_document
from agent.incidents.render import render_incident
from agent.incidents.tree import TREE_IDLE, TreeFacts
from agent.policy.facts import tree_facts
from agent.policy.holder import PolicyHolder
from tests.classify.test_repository import git, make_repo
from tests.incidents.helpers import T0

CP = ProcessInfo(
    pid=5151, exe="/usr/bin/cp", cmdline="cp -r motor-ctl /media/usb", uid=1000, ppid=1
)


@pytest.fixture(scope="module")
def holder() -> PolicyHolder:
    h = PolicyHolder(lambda: PoliciesSection())
    assert h.reload()
    return h


def correlation(holder: PolicyHolder) -> CorrelationCore:
    def judge(tree: TreeFacts) -> list:  # type: ignore[type-arg]
        p = holder.current
        return p.decide(tree_facts(tree, p.min_counts, p.min_confidence), when=tree.time)

    return CorrelationCore(judge_tree=judge)


def copy_events(src: Path, usb: Path, proc: ProcessInfo | None = CP) -> list[FileEvent]:
    """`cp -r src usb/`, then one CREATED event per copied file, as the file sensor sends."""
    subprocess.run(["cp", "-r", str(src), str(usb)], check=True)
    clf = Classifier(ClassifySection(use_magika=False), cache=None)
    out = []
    files = sorted(p for p in (usb / src.name).rglob("*") if p.is_file())
    for i, p in enumerate(files):
        a = clf.classify_path(str(p))
        t = T0 + timedelta(milliseconds=5 * i)
        out.append(
            FileEvent(
                FileAction.CREATED,
                str(p),
                Channel.REMOVABLE,
                size=a.size,
                artefact=a,
                process=proc,
                time=t,
            )
        )
    return out


def test_cp_r_of_a_500_file_repository_is_one_incident(
    tmp_path: Path, holder: PolicyHolder
) -> None:
    repo = make_repo(tmp_path / "motor-ctl", files=498)  # + drive.c + README = 500 files
    usb = tmp_path / "usb"
    usb.mkdir()
    events = copy_events(repo, usb)
    corr = correlation(holder)
    findings = [f for e in events for f in corr.observe(e)]
    assert findings == []  # the copy is still going on as far as anyone knows
    later = events[-1].time + TREE_IDLE + timedelta(seconds=1)
    findings = corr.close_trees(later)
    assert len(findings) == 1, [f.title for f in findings]
    (f,) = findings
    assert (
        f.kind == "tree_copy" and f.rule_id == "rd-assets-tree-out-large" and f.severity == "high"
    )
    tree = f.evidence["tree"]
    dest = usb / "motor-ctl"
    assert (
        tree["files_count"] == 500 and len(tree["paths"]) == 500 and len(f.evidence["files"]) == 500
    )
    assert not [p for p in tree["paths"] if "/.git/" in p]
    assert tree["git_files"] > 10 and tree["root"] == str(dest)
    assert tree["repository"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert tree["repository"]["remote"] == "https://gitee.com/lab/motor-ctl.git"
    assert tree["kinds"]["source_code"] == 499  # 498 .py + drive.c
    assert f.title.startswith("tree motor-ctl (500 files, ")
    assert "repository https://gitee.com/lab/motor-ctl.git at " in f.title and "by cp" in f.title
    doc = new_document(f, "u", "h")
    assert doc["events_count"] == 500 and len(doc["evidence"]["tree"]["paths"]) == 500
    shown = render_incident({**doc, "id": 1})
    assert f"  tree {dest}: 500 files, " in shown and "source_code 499" in shown
    head = git(repo, "rev-parse", "HEAD")
    assert f"    repository https://gitee.com/lab/motor-ctl.git commit {head} on main" in shown
    assert corr.close_trees(later, final=True) == []  # told once


def test_a_few_files_and_separate_copies(tmp_path: Path, holder: PolicyHolder) -> None:
    small = make_repo(tmp_path / "small", files=5)
    (tmp_path / "usb").mkdir()
    corr = correlation(holder)
    events = copy_events(small, tmp_path / "usb")
    for e in events:
        assert corr.observe(e) == []
    # 7 files with its .git: not a project by the pack's threshold (20), no incident
    assert corr.close_trees(events[-1].time, final=True) == []


def test_two_processes_are_two_copies(tmp_path: Path, holder: PolicyHolder) -> None:
    a = make_repo(tmp_path / "a", files=30)
    b = make_repo(tmp_path / "b", files=40)
    (tmp_path / "usb").mkdir()
    other = ProcessInfo(
        pid=6262, exe="/usr/bin/rsync", cmdline="rsync -a b /media/usb", uid=1000, ppid=1
    )
    ev = copy_events(a, tmp_path / "usb") + copy_events(b, tmp_path / "usb", other)
    corr = correlation(holder)
    for e in sorted(ev, key=lambda e: e.time):
        corr.observe(e)
    found = sorted(
        corr.close_trees(None, final=True), key=lambda f: f.evidence["tree"]["files_count"]
    )
    assert [f.evidence["tree"]["files_count"] for f in found] == [32, 42]
    assert [f.evidence["tree"]["root"] for f in found] == [
        str(tmp_path / "usb" / "a"),
        str(tmp_path / "usb" / "b"),
    ]


def test_the_tree_supersedes_its_files_own_copy_incidents(
    tmp_path: Path, holder: PolicyHolder
) -> None:
    import dataclasses

    from tests.incidents.helpers import EAR, weights

    repo = make_repo(tmp_path / "lab", files=40)
    (tmp_path / "usb").mkdir()
    events = copy_events(repo, tmp_path / "usb")
    ckpt = dataclasses.replace(
        events[0],
        path=str(tmp_path / "usb" / "lab" / "model.safetensors"),
        artefact=weights(),
        decisions=(EAR,),
        uid="ckpt",
    )
    corr = correlation(holder)
    (per_file,) = corr.observe(ckpt)  # the checkpoint's own removable_copy incident
    assert per_file.kind == "removable_copy"
    for e in events[1:]:
        assert corr.observe(e) == []
    (tree,) = corr.close_trees(None, final=True)
    assert tree.kind == "tree_copy" and tree.supersedes == (per_file.dedup_key,)
    assert str(tmp_path / "usb" / "lab" / "model.safetensors") in tree.evidence["tree"]["paths"]
    assert tree.evidence["tree"]["kinds"]["model_weights"] == 1


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.incidents import tree as T

    monkeypatch.setattr(T, "MAX_HELD_FILES", 50)
    trees = T.TreeCopies()
    for pid in (1, 2):
        proc = ProcessInfo(pid=pid, exe="/usr/bin/cp")
        for i in range(40):
            e = FileEvent(
                FileAction.CREATED,
                f"/media/usb/{pid}/f{i}",
                Channel.REMOVABLE,
                size=1,
                process=proc,
                time=T0,
            )
            trees.note(e)
    first, second = trees.due(None, final=True)
    assert (len(first.files), first.more, len(second.files), second.more) == (40, 0, 10, 30)
    assert first.files_count == second.files_count == 40
