"""Git repositories as artefacts: what a working tree or bare repository is, from its files.

In an R&D centre most source code lives in git, and the commonest way it leaves is a
`git push` to a personal or foreign remote (ATT&CK T1567.001). A repository is described
cheaply from the git files themselves — `HEAD`, `config`, `packed-refs` and the header and
entries of `index` — with plain bounded reads cached per git directory and refreshed only
when one of those files changes (four `stat`s per question, never a re-read per event and
never a `git` subprocess). Credentials in remote URLs are removed.

Files under `.git/` (and inside a bare repository) are part of their repository: the
classifier gives them one `repository` tag instead of reading config files and packfiles
as documents (`internal_tag`). A flow of a git process is tied to the repository it works
in by the process's cwd and arguments (`gitprocess.flow_repository`), so that policy sees
`repository.*` facts and the correlator can tell a push story.
"""

from __future__ import annotations

import fnmatch
import os
import re
import struct
import threading
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.classify.source import (
    LANGUAGES,
    AncestorMemo,
    _read,
    _resolve_git_dir,
    config_remote_urls,
    resolve_head,
)
from agent.events import Tag

MAX_INDEX_BYTES = 64 << 20  # an index past this is counted from its header only
MAX_LANGUAGES = 5
MAX_PATH = 4096  # a tracked path longer than this is a damaged (or hostile) index
_CRED = re.compile(r"^(\w[\w+.-]*://)[^@/]+@")
_SCP = re.compile(r"^(?:[^@/:]+@)?([^/:]+):(?!//)")


@dataclass(frozen=True, slots=True)
class Repository:
    """A git repository as policy and incidents see it; every field may be unknown."""

    root: str  # the working tree (the git directory for a bare repository)
    git_dir: str
    bare: bool
    remote: str | None  # origin's URL (else the first remote's), credentials stripped
    remotes: tuple[tuple[str, str], ...]  # (name, url) of every remote, stripped
    branch: str | None
    commit: str | None
    files_count: int | None  # tracked files, from the index header
    languages: tuple[str, ...]  # most common first, from the tracked paths' extensions
    size: int | None  # bytes of the tracked files as the index last saw them

    @property
    def name(self) -> str:
        base = os.path.basename(self.root.rstrip("/")) or self.root
        return base.removesuffix(".git") if self.bare else base

    def doc(self) -> dict[str, Any]:
        """The repository as plain data (facts `repository.<key>`, incident evidence)."""
        return {
            "name": self.name,
            "root": self.root,
            "bare": self.bare,
            "remote": self.remote,
            "remote_host": remote_host(self.remote) if self.remote else None,
            "remotes": [url for _n, url in self.remotes],
            "branch": self.branch,
            "commit": self.commit,
            "files_count": self.files_count,
            "languages": list(self.languages),
            "size": self.size,
        }


def strip_credentials(url: str) -> str:
    return _CRED.sub(r"\1", url.strip())


def remote_host(url: str) -> str | None:
    """The host of a git URL (`scheme://[user@]host[:port]/…` or scp-like `user@host:path`)."""
    url = url.strip()
    if "://" in url:
        rest = url.split("://", 1)[1]
        hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if hostport.startswith("["):
            return hostport[1 : hostport.find("]")].lower() or None
        return hostport.split(":", 1)[0].lower() or None
    m = _SCP.match(url)
    if m and not url.startswith(("/", ".")):
        return m.group(1).lower()
    return None  # a local path


def is_approved(url_or_host: str | None, approved: Iterable[str]) -> bool:
    """Whether a remote URL (or a bare host name) is one of the site's approved remotes.

    An entry with `://` or `:` is a URL prefix (`https://git.corp.example/`); any other
    entry is a host name or glob (`git.corp.example`, `*.corp.example`).
    """
    if not url_or_host:
        return False
    url = strip_credentials(url_or_host)
    host = remote_host(url) or url.lower()
    for entry in approved:
        entry = entry.strip()
        if not entry:
            continue
        if "://" in entry or (":" in entry and "@" in entry):
            if url.startswith(entry):
                return True
        elif fnmatch.fnmatchcase(host, entry.lower()):
            return True
    return False


# --- finding the repository ----------------------------------------------------------
_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, ...], Repository | None]] = {}
# HEAD commit -> the repository seen at it: a bundle or archive of that commit written
# anywhere (git bundle create /tmp/x.bundle) is named after its repository
_by_commit: OrderedDict[str, Repository] = OrderedDict()
MAX_COMMITS = 10_000


def _is_bare_dir(d: str) -> bool:
    return (
        os.path.isfile(os.path.join(d, "HEAD"))
        and os.path.isdir(os.path.join(d, "objects"))
        and os.path.isdir(os.path.join(d, "refs"))
    )


def git_dir_of(path: str) -> tuple[str, str, bool] | None:
    """(root, git dir, bare) of the repository whose internals hold `path`, else None.

    Internals are anything under a `.git` directory or inside a bare repository (a
    directory with `HEAD`, `objects/` and `refs/`); the working tree's own files are not.
    """
    full = os.path.abspath(path)
    parts = full.split(os.sep)
    if ".git" in parts:
        i = parts.index(".git")
        git_dir = os.sep.join(parts[: i + 1]) or os.sep
        return os.sep.join(parts[:i]) or os.sep, git_dir, False
    found = _bare_repositories.nearest(os.path.dirname(full))
    return (found, found, True) if found else None


def _is_bare_repository(d: str) -> bool:
    return _is_bare_dir(d) and (d.endswith(".git") or _is_bare_config(d))


_bare_repositories = AncestorMemo(_is_bare_repository)


def _is_bare_config(d: str) -> bool:
    text = _read(os.path.join(d, "config"), 64 << 10) or ""
    return re.search(r"^\s*bare\s*=\s*true\s*$", text, re.M | re.I) is not None


def repository_in(directory: str) -> Repository | None:
    """The repository a process working in `directory` works on (tree or bare), or None."""
    d = os.path.abspath(directory)
    for _ in range(64):
        dot_git = os.path.join(d, ".git")
        if os.path.exists(dot_git):
            return repository(d, _resolve_git_dir(dot_git), bare=False)
        if _is_bare_dir(d):
            return repository(d, d, bare=True)
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    return None


def repository_of(path: str) -> Repository | None:
    """The repository a file belongs to: as an internal, or as a tracked tree's file."""
    found = git_dir_of(path)
    if found is not None:
        root, git_dir, bare = found
        if not bare:
            return repository(root, _resolve_git_dir(git_dir), bare=False)
        return repository(root, git_dir, bare=True)
    return repository_in(os.path.dirname(os.path.abspath(path)))


def _stamp(git_dir: str, common: str) -> tuple[int, ...]:
    out = []
    for d, name in (
        (git_dir, "HEAD"),
        (common, "config"),
        (git_dir, "index"),
        (common, "packed-refs"),
    ):
        try:
            st = os.stat(os.path.join(d, name))
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [0, 0]
    return tuple(out)


def _common_dir(git_dir: str) -> str:
    commondir = _read(os.path.join(git_dir, "commondir"), 4096)
    if commondir:
        return os.path.normpath(os.path.join(git_dir, commondir.strip()))
    return git_dir


def repository(root: str, git_dir: str, bare: bool) -> Repository | None:
    """The repository at `git_dir`, cached until HEAD, config, index or packed-refs change."""
    common = _common_dir(git_dir)
    stamp = _stamp(git_dir, common)
    with _lock:
        hit = _cache.get(git_dir)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    repo = _read_repository(root, git_dir, common, bare)
    with _lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[git_dir] = (stamp, repo)
        if repo is not None and repo.commit:
            _by_commit[repo.commit] = repo
            _by_commit.move_to_end(repo.commit)
            while len(_by_commit) > MAX_COMMITS:
                _by_commit.popitem(last=False)
    return repo


def by_commit(commit: str) -> Repository | None:
    """The repository last seen with `commit` at its HEAD (no I/O), or None."""
    with _lock:
        return _by_commit.get(commit)


def _read_repository(root: str, git_dir: str, common: str, bare: bool) -> Repository | None:
    head = _read(os.path.join(git_dir, "HEAD"), 4096)
    if head is None:
        return None
    branch, commit = resolve_head(head, git_dir, common)
    remotes = remotes_of(common)
    names = dict(remotes)
    remote = names.get("origin") or (remotes[0][1] if remotes else None)
    count, languages, size = _index_summary(os.path.join(git_dir, "index"))
    return Repository(
        root=root,
        git_dir=git_dir,
        bare=bare,
        remote=remote,
        remotes=remotes,
        branch=branch,
        commit=commit,
        files_count=count,
        languages=languages,
        size=size,
    )


def remotes_of(git_dir: str) -> tuple[tuple[str, str], ...]:
    """Every `[remote "name"] url = …` of the config (first URL per remote), stripped."""
    urls = config_remote_urls(git_dir)
    return tuple((name, strip_credentials(url)) for name, url in urls.items())


def _index_summary(path: str) -> tuple[int | None, tuple[str, ...], int | None]:
    """(tracked files, languages, bytes) from a git index (versions 2, 3 and 4)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INDEX_BYTES)
    except OSError:
        return None, (), None
    if len(data) < 12 or data[:4] != b"DIRC":
        return None, (), None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4):
        return count, (), None
    langs: Counter[str] = Counter()
    total = 0
    pos = 12
    prev = b""
    for _ in range(count):
        if pos + 62 > len(data):
            return count, _top(langs), None  # cut at MAX_INDEX_BYTES: size unknown
        size = struct.unpack(">I", data[pos + 36 : pos + 40])[0]
        flags = struct.unpack(">H", data[pos + 60 : pos + 62])[0]
        start = pos + 62 + (2 if version >= 3 and flags & 0x4000 else 0)
        if version == 4:
            strip, start = _varint(data, start)
            end = data.find(b"\0", start)
            if end < 0 or strip > len(prev):
                return count, _top(langs), None
            if len(prev) - strip + end - start > MAX_PATH:  # names grow by prefix: bound
                return count, _top(langs), None
            name = prev[: len(prev) - strip] + data[start:end]
            pos = end + 1
        else:
            end = data.find(b"\0", start)
            if end < 0:
                return count, _top(langs), None
            name = data[start:end]
            pos = pos + ((62 + (start - pos - 62) + len(name) + 8) & ~7)
        prev = name
        total += size
        lang = _language(name)
        if lang:
            langs[lang] += 1
    return count, _top(langs), total


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint (index v4 path prefix length)."""
    c = data[pos] if pos < len(data) else 0
    pos += 1
    value = c & 0x7F
    while c & 0x80 and pos < len(data):
        value += 1
        c = data[pos]
        pos += 1
        value = (value << 7) + (c & 0x7F)
    return value, pos


def _language(name: bytes) -> str | None:
    base = name.rsplit(b"/", 1)[-1].decode("utf-8", "replace").lower()
    if "." not in base:
        return None
    return LANGUAGES.get(base.rsplit(".", 1)[-1])


def _top(langs: Counter[str]) -> tuple[str, ...]:
    return tuple(lang for lang, _n in langs.most_common(MAX_LANGUAGES))


# --- git archive outputs -------------------------------------------------------------
_PAX_COMMENT = re.compile(rb"\d+ comment=([0-9a-f]{40}|[0-9a-f]{64})\n")
_HEX_COMMIT = re.compile(rb"([0-9a-f]{40}|[0-9a-f]{64})")


def archive_commit(path: str) -> str | None:
    """The commit `git archive` recorded in its output: the pax global header's
    `comment` of a tar (plain or gzip), or the zip comment. Bounded reads (2 KiB at the
    start, 64 KiB at the end); None for any other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
            if head[:2] == b"\x1f\x8b":  # tar.gz: the first blocks only
                try:
                    head = zlib.decompressobj(wbits=31).decompress(head, 2048)
                except zlib.error:
                    return None
            if len(head) >= 1024 and head[156:157] == b"g":
                m = _PAX_COMMENT.match(head[512:1024])
                return m.group(1).decode() if m else None
            if head[:4] != b"PK\x03\x04":
                return None
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (64 << 10) - 22))
            tail = f.read()
    except OSError:
        return None
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(tail):
        return None
    length = struct.unpack("<H", tail[eocd + 20 : eocd + 22])[0]
    comment = tail[eocd + 22 : eocd + 22 + length]
    m = _HEX_COMMIT.fullmatch(comment)
    return m.group(1).decode() if m else None


# --- the classifier's view of internals ----------------------------------------------
def internal_tag(path: str) -> Tag | None:
    """The one tag of a file under `.git/` or in a bare repository, else None."""
    found = git_dir_of(path)
    if found is None:
        return None
    root, git_dir, bare = found
    repo = repository(root, git_dir if bare else _resolve_git_dir(git_dir), bare)
    details: dict[str, Any] = {"internal": os.path.relpath(path, git_dir), "detector": "git_dir"}
    if repo is None:
        return Tag("repository", f"inside git directory {git_dir}", details)
    details.update(repo.doc())
    where = repo.remote or f"local repository {repo.name}"
    commit = f" at {repo.commit[:12]}" if repo.commit else ""
    return Tag("repository", f"git internals of {where}{commit}", details)
