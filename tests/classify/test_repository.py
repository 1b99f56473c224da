"""Repositories as artefacts: real git repositories, read from their files only."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.classify import gitprocess as G
from agent.classify import repository as R
from agent.classify.classifier import Classifier
from agent.config import ClassifySection
from agent.events import Flow, ProcessInfo

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def make_repo(path: Path, files: int = 30, index_version: int | None = None) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    if index_version:
        git(path, "config", "index.version", str(index_version))
    git(path, "remote", "add", "origin", "https://alice:s3cret@gitee.com/lab/motor-ctl.git")
    git(path, "remote", "add", "backup", "git@github.com:alice/motor-ctl.git")
    (path / "src" / "deep" / "er").mkdir(parents=True)
    for i in range(files):
        sub = "src/deep/er" if i % 3 == 0 else "src"
        (path / sub / f"mod_{i:03d}.py").write_text(f"# module {i}\nX = {i}\n")
    (path / "drive.c").write_text("int main(void) { return 0; }\n")
    (path / "README").write_text("motor control\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "motor-ctl")


def test_working_tree_is_a_repository(repo: Path) -> None:
    r = R.repository_in(str(repo / "src"))
    assert r is not None
    assert r.root == str(repo) and not r.bare
    assert r.remote == "https://gitee.com/lab/motor-ctl.git"  # credentials stripped
    assert "s3cret" not in repr(r)
    assert dict(r.remotes)["backup"] == "git@github.com:alice/motor-ctl.git"
    assert r.branch == "main"
    assert r.commit == git(repo, "rev-parse", "HEAD")
    assert r.files_count == 32
    assert r.languages[:2] == ("python", "c")
    tracked = sum(
        p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
    )
    assert r.size == tracked
    doc = r.doc()
    assert doc["remote_host"] == "gitee.com" and doc["name"] == "motor-ctl"


@pytest.mark.parametrize("version", [2, 3, 4])
def test_index_versions_are_counted(tmp_path: Path, version: int) -> None:
    repo = make_repo(tmp_path / f"v{version}", files=40, index_version=version)
    r = R.repository_in(str(repo))
    assert r is not None and r.files_count == 42
    assert r.languages[0] == "python"
    assert r.size is not None and r.size > 0


def test_cached_until_the_git_files_change(repo: Path) -> None:
    first = R.repository_in(str(repo))
    assert R.repository_in(str(repo)) is first  # cached: no re-read
    (repo / "new.rs").write_text("fn main() {}\n")
    git(repo, "add", "new.rs")
    git(repo, "commit", "-q", "-m", "two")
    second = R.repository_in(str(repo))
    assert second is not first and second is not None
    assert second.files_count == 33 and second.commit == git(repo, "rev-parse", "HEAD")


def test_bare_repository(tmp_path: Path, repo: Path) -> None:
    bare = tmp_path / "srv" / "motor-ctl.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    r = R.repository_in(str(bare))
    assert r is not None and r.bare and r.name == "motor-ctl"
    assert r.commit == git(repo, "rev-parse", "HEAD")
    packs = list((bare / "objects").rglob("*"))
    assert packs
    for p in packs:
        if p.is_file():
            found = R.git_dir_of(str(p))
            assert found is not None and found[2] is True


def test_git_internals_are_the_repository_not_documents(repo: Path) -> None:
    clf = Classifier(ClassifySection(use_magika=False), cache=None)
    internals = [p for p in (repo / ".git").rglob("*") if p.is_file()]
    assert len(internals) > 20
    for p in internals:
        a = clf.classify_path(str(p))
        assert a.kinds == ("repository",), p
        d = a.tags[0].details
        assert d["root"] == str(repo) and d["commit"] == git(repo, "rev-parse", "HEAD")
    cfg = clf.classify_path(str(repo / ".git" / "config"))
    assert "s3cret" not in repr(cfg)
    # the working tree's own files are still source code of their repository
    a = clf.classify_path(str(repo / "src" / "mod_001.py"))
    assert "source_code" in a.kinds and "repository" not in a.kinds


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://u:p@github.com/a/b.git", "github.com"),
        ("ssh://git@gitlab.com:2222/a/b.git", "gitlab.com"),
        ("git@gitee.com:a/b.git", "gitee.com"),
        ("git://[::1]/repo", "::1"),
        ("/srv/git/b.git", None),
        ("./b.git", None),
    ],
)
def test_remote_host(url: str, host: str | None) -> None:
    assert R.remote_host(url) == host


def test_approved_remotes() -> None:
    approved = ["git.corp.example", "*.lab.corp.example", "https://github.com/corp-org/"]
    assert R.is_approved("https://git.corp.example/x.git", approved)
    assert R.is_approved("git@build.lab.corp.example:x.git", approved)
    assert R.is_approved("https://github.com/corp-org/tool.git", approved)
    assert not R.is_approved("https://github.com/alice/tool.git", approved)
    assert not R.is_approved("https://git.corp.example.evil.com/x.git", approved)
    assert not R.is_approved(None, approved)


def _flow(proc: ProcessInfo, out: int, inn: int, name: str = "gitee.com") -> Flow:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    return Flow(
        "tcp", "10.0.0.2", 40000, "1.2.3.4", 443, now, now, out, inn, name=name, process=proc
    )


def _carried(
    exe: str,
    cmdline: str,
    cwd: Path,
    sizes: tuple[int, int],
    approved: list[str],
    name: str = "gitee.com",
) -> dict[str, Any] | None:
    """The repository a flow of (out, in) bytes to `name` carried, sent by this process."""
    proc = ProcessInfo(pid=10, exe=exe, cmdline=cmdline, cwd=str(cwd))
    return G.flow_repository(_flow(proc, *sizes, name), approved)


def test_git_push_flow_names_its_repository(repo: Path) -> None:
    git_push = ("/usr/bin/git", "git push backup main")
    doc = _carried(*git_push, repo / "src", (800_000, 4_000), ["git.corp.example"], "github.com")
    assert doc is not None
    assert doc["direction"] == "push" and doc["approved"] is False
    assert (
        doc["push_url"] == "git@github.com:alice/motor-ctl.git" and doc["push_host"] == "github.com"
    )
    assert doc["commit"] == git(repo, "rev-parse", "HEAD") and doc["files_count"] == 32


HTTPS_HELPER = (
    "/usr/lib/git-core/git-remote-https",
    "git-remote-https origin https://gitee.com/lab/motor-ctl.git",
)
SSH_PUSH = ("/usr/bin/ssh", "ssh git@github.com git-receive-pack 'alice/x.git'")


@pytest.mark.parametrize(
    ("exe", "cmdline", "sizes", "direction"),
    [
        (*HTTPS_HELPER, (900_000, 5_000), "push"),
        (*HTTPS_HELPER, (5_000, 900_000), "fetch"),
        (*SSH_PUSH, (10, 10), "push"),
        ("/usr/bin/ssh", "ssh build01", (900_000, 10), None),
        ("/usr/bin/git", "git clone https://x/y", (900_000, 10), "fetch"),
        ("/usr/bin/curl", "curl -T a https://x", (900_000, 10), None),
    ],
)
def test_transports_and_directions(
    repo: Path, exe: str, cmdline: str, sizes: tuple[int, int], direction: str | None
) -> None:
    doc = _carried(exe, cmdline, repo, sizes, [])
    if direction is None:
        assert doc is None  # not a git transfer
    else:
        assert doc is not None and doc["direction"] == direction


def test_ssh_push_on_another_port_to_an_unapproved_url(repo: Path) -> None:
    ssh = "ssh -o SendEnv=GIT_PROTOCOL -p 2222 git@github.com git-receive-pack 'alice/x.git'"
    # the flow's name (gitee.com here) does not approve a push to an unapproved URL
    doc = _carried("/usr/bin/ssh", ssh, repo, (10, 10), ["gitee.com"])
    assert doc is not None and doc["push_url"] == "ssh://github.com:2222/alice/x.git"
    assert doc["push_host"] == "github.com" and doc["approved"] is False
    assert doc["direction"] == "push"


def test_push_of_a_repository_named_with_git_c(repo: Path, tmp_path: Path) -> None:
    doc = _carried("/usr/bin/git", f"git -C {repo} push", tmp_path, (900_000, 10), ["gitee.com"])
    assert doc is not None and doc["root"] == str(repo) and doc["approved"] is True


def test_a_bundle_is_named_after_its_repository(repo: Path, tmp_path: Path) -> None:
    clf = Classifier(ClassifySection(use_magika=False), cache=None)
    head = git(repo, "rev-parse", "HEAD")
    # written inside the working tree: found by walking up
    git(repo, "bundle", "create", "-q", "motor.bundle", "--all")
    a = clf.classify_path(str(repo / "motor.bundle"))
    assert a.kinds == ("archive", "source_code")
    code = next(t for t in a.tags if t.kind == "source_code")
    assert code.details["git_commit"] == head and code.details["repository"] == "motor-ctl"
    assert code.details["git_remote"] == "https://gitee.com/lab/motor-ctl.git"
    assert code.evidence == (
        "history of git repository https://gitee.com/lab/motor-ctl.git in a git bundle"
    )
    # written anywhere: named by its commit, after git's reads of the repository's internals
    out = tmp_path / "outbox"
    out.mkdir()
    git(repo, "bundle", "create", "-q", str(out / "x.bundle"), "--all")
    clf.classify_path(str(repo / ".git" / "HEAD"))
    b = clf.classify_path(str(out / "x.bundle"))
    code = next(t for t in b.tags if t.kind == "source_code")
    assert code.details["git_root"] == str(repo) and code.details["git_commit"] == head
    # a bundle of a repository never seen stays an anonymous history
    other = make_repo(tmp_path / "unseen")
    git(other, "commit", "-q", "--allow-empty", "-m", "only here")
    git(other, "bundle", "create", "-q", str(out / "y.bundle"), "--all")
    c = clf.classify_path(str(out / "y.bundle"))
    code = next(t for t in c.tags if t.kind == "source_code")
    assert "git_root" not in code.details and code.evidence == "repository history in a git bundle"


def test_hostile_indexes_are_bounded(tmp_path: Path) -> None:
    import struct
    import time

    # v4 names grow by prefix: a million one-byte suffixes would copy ~5e11 bytes
    entry = b"\0" * 60 + struct.pack(">H", 1) + b"\0" + b"a\0"
    count = 300_000
    v4 = b"DIRC" + struct.pack(">II", 4, count) + entry * count
    (tmp_path / "v4").write_bytes(v4)
    t0 = time.process_time()
    n, _langs, size = R._index_summary(str(tmp_path / "v4"))
    assert n == count and size is None  # cut where the names became absurd
    # garbage after a valid header, and a count far past the data
    (tmp_path / "junk").write_bytes(
        b"DIRC" + struct.pack(">II", 2, 2**32 - 1) + random.Random(1).randbytes(1 << 16)
    )
    assert R._index_summary(str(tmp_path / "junk"))[0] == 2**32 - 1
    (tmp_path / "short").write_bytes(b"DIRC\0\0")
    assert R._index_summary(str(tmp_path / "short")) == (None, (), None)
    assert time.process_time() - t0 < 20  # bounded work, generous for a shared machine


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_git_archive_outputs_name_their_repository(repo: Path, tmp_path: Path, fmt: str) -> None:
    clf = Classifier(ClassifySection(use_magika=False), cache=None)
    head = git(repo, "rev-parse", "HEAD")
    out = tmp_path / f"release.{fmt}"
    git(repo, "archive", f"--format={fmt}", "-o", str(out), "HEAD")
    assert R.archive_commit(str(out)) == head
    clf.classify_path(str(repo / ".git" / "HEAD"))  # git read the repository to archive it
    a = clf.classify_path(str(out))
    arch = next(t for t in a.tags if t.kind == "archive" and "member" not in t.details)
    assert arch.details["git_commit"] == head and arch.details["git_root"] == str(repo)
    assert arch.evidence.endswith(
        f"git archive of commit {head[:12]} of repository https://gitee.com/lab/motor-ctl.git"
    )
    # an ordinary archive of the same files carries no commit
    plain = tmp_path / f"plain.{fmt}"
    if fmt == "zip":
        subprocess.run(["zip", "-qr", str(plain), "src"], cwd=repo, check=True)
    else:
        flag = "czf" if fmt == "tar.gz" else "cf"
        subprocess.run(["tar", flag, str(plain), "src"], cwd=repo, check=True)
    assert R.archive_commit(str(plain)) is None
