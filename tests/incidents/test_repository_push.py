"""Pushes are stories: a real repository, the real policy stage and shipped packs, the
correlator. The e2e test (tests/e2e/test_git_push.py) does the same with a real push."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agent.config import PoliciesSection
from agent.events import (
    Artefact,
    CategoryMatch,
    Channel,
    FileAction,
    FileEvent,
    Flow,
    ProcessInfo,
    Tag,
)
from agent.incidents.correlate import CorrelationCore
from agent.policy.facts import flow_facts
from agent.policy.holder import PolicyHolder
from agent.policy.stage import PolicyStage
from tests.classify.test_repository import git, make_repo
from tests.incidents.helpers import T0


def stage(approved: list[str]) -> PolicyStage:
    holder = PolicyHolder(lambda: PoliciesSection())
    assert holder.reload()
    return PolicyStage(holder, approved)


def push_flow(repo: Path, cmd: str, out: int = 810_000, inn: int = 6_000, **kw: object) -> Flow:
    proc = ProcessInfo(
        pid=4242, exe="/usr/bin/git", cmdline=cmd, cwd=str(repo), uid=1000, user="alice", ppid=1
    )
    fields: dict[str, object] = {
        "dest_class": "foreign",
        "country": "US",
        "name": "github.com",
        "sni": "github.com",
        **kw,
    }
    return Flow(
        "tcp",
        "10.1.2.3",
        51000,
        "140.82.112.3",
        443,
        T0,
        T0 + timedelta(seconds=3),
        out,
        inn,
        process=proc,
        **fields,
    )  # type: ignore[arg-type]


def test_push_abroad_is_one_incident_naming_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "motor-ctl")
    head = git(repo, "rev-parse", "HEAD")
    st = stage(["git.corp.example"])
    corr = CorrelationCore()
    # a file of the repository with a category, seen before the push
    src = repo / "src" / "mod_001.py"
    tag = Tag("source_code", "python source", {"language": "python", "git_root": str(repo)})
    art = Artefact(
        "ab" * 32, 20, tags=(tag,), matches=(CategoryMatch("CN-CAT-AI", 3, "x", 3, "high"),)
    )
    corr.observe(
        FileEvent(FileAction.WRITTEN, str(src), Channel.LOCAL, size=20, artefact=art, time=T0)
    )
    flow = st(push_flow(repo, "git push backup main"))
    assert isinstance(flow, Flow) and flow.repository is not None
    facts = flow_facts(flow)
    assert facts["repository.approved"] is False and facts["repository.direction"] == "push"
    assert facts["repository.push_host"] == "github.com" and facts["repository.files_count"] == 32
    assert [d.rule_id for d in flow.decisions if d.action == "alert"] == [
        "rd-assets-repository-push"
    ]
    (f,) = corr.observe(flow)
    assert f.kind == "repository_push" and f.severity == "high"
    assert "repository motor-ctl (git@github.com:alice/motor-ctl.git" in f.title
    assert head[:12] in f.title and "github.com (US, foreign)" in f.title
    assert "categories CN-CAT-AI" in f.title and "python/c" in f.title
    r = f.evidence["repository"]
    assert r["commit"] == head and r["root"] == str(repo) and r["seen_categories"] == ["CN-CAT-AI"]
    assert r["remote"] == "https://gitee.com/lab/motor-ctl.git"  # credentials stripped
    assert "s3cret" not in repr(f)
    # a repeat of the push (a second connection) has the same dedup key: one incident
    (g,) = corr.observe(st(push_flow(repo, "git push backup main")))
    assert g.dedup_key == f.dedup_key


def test_push_to_an_approved_remote_opens_none(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "motor-ctl")
    st = stage(["github.com/alice/", "git@github.com:alice/"])
    flow = st(push_flow(repo, "git push backup main"))
    assert isinstance(flow, Flow) and flow.repository and flow.repository["approved"] is True
    assert not [d for d in flow.decisions if d.action == "alert"]
    assert CorrelationCore().observe(flow) == []


def test_fetch_and_clone_are_not_egress(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "motor-ctl")
    st = stage([])
    corr = CorrelationCore()
    for cmd, out, inn in (
        ("git fetch origin", 3_000, 900_000),
        ("git clone https://github.com/a/b", 3_000, 900_000),
    ):
        flow = st(push_flow(repo, cmd, out, inn))
        assert (
            isinstance(flow, Flow) and flow.repository and flow.repository["direction"] == "fetch"
        )
        assert not [d for d in flow.decisions if d.action == "alert"]
        assert corr.observe(flow) == []


def test_push_to_gitee_is_the_domestic_rule(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "motor-ctl")
    flow = stage([])(
        push_flow(
            repo, "git push", dest_class="domestic", country="CN", name="gitee.com", sni="gitee.com"
        )
    )
    assert isinstance(flow, Flow)
    (f,) = CorrelationCore().observe(flow)
    assert f.rule_id == "rd-assets-repository-push-domestic" and f.severity == "medium"
    assert "https://gitee.com/lab/motor-ctl.git" in f.title  # origin, no credentials


def test_incidents_show_names_repository_commit_and_remote(tmp_path: Path) -> None:
    from agent.incidents.model import new_document
    from agent.incidents.render import render_incident

    repo = make_repo(tmp_path / "motor-ctl")
    (f,) = CorrelationCore().observe(stage([])(push_flow(repo, "git push backup main")))
    doc = new_document(f, "u1", "h1")
    assert doc["evidence"]["repository"]["commit"] == git(repo, "rev-parse", "HEAD")
    text = render_incident(doc)
    assert (
        f"repository motor-ctl at {repo}: commit {git(repo, 'rev-parse', 'HEAD')} on main" in text
    )
    assert (
        "remote https://gitee.com/lab/motor-ctl.git; pushed to git@github.com:alice/motor-ctl.git"
        in text
    )


def test_a_bundle_uploaded_abroad_names_the_repository(tmp_path: Path) -> None:
    from agent.classify.classifier import Classifier
    from agent.config import ClassifySection
    from tests.incidents.helpers import CURL, judge

    repo = make_repo(tmp_path / "motor-ctl")
    out = tmp_path / "outbox"
    out.mkdir()
    git(repo, "bundle", "create", "-q", str(out / "m.bundle"), "--all")
    clf = Classifier(ClassifySection(use_magika=False), cache=None)
    clf.classify_path(str(repo / ".git" / "HEAD"))  # git read its internals to bundle them
    a = clf.classify_path(str(out / "m.bundle"))
    corr = CorrelationCore(judge_transfer=judge)
    read = FileEvent(
        FileAction.READ, str(out / "m.bundle"), size=a.size, artefact=a, process=CURL, time=T0
    )
    assert corr.observe(read) == []
    up = Flow(
        "tcp",
        "10.1.2.3",
        51000,
        "203.0.113.9",
        443,
        T0,
        T0 + timedelta(seconds=2),
        a.size + 900,
        4000,
        sni="paste.example",
        name="paste.example",
        dest_class="foreign",
        country="US",
        process=CURL,
    )
    (f,) = corr.observe(up)
    assert f.kind == "exfiltration" and f.rule_id == "rd-assets-source-out"
    assert "'m.bundle' (repository https://gitee.com/lab/motor-ctl.git)" in f.title
    tags = f.evidence["files"][0]["tags"]
    assert any(
        t["evidence"].startswith("history of git repository https://gitee.com/") for t in tags
    )
