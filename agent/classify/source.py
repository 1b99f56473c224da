"""Source code: the language (extension or shebang) and its git repository.

The language comes from the extension or a `#!` line; its comments are pulled out
(bounded, agent/classify/code_comments.py) so keyword matching sees what engineers write
about the code. The repository is found by walking up from the file to a `.git`
directory (or a `.git` file pointing to one) and reading `config` for the remote URL and
`HEAD` → ref → `packed-refs` for the commit: plain file reads, no `git` subprocess.
Repository facts are cached per `.git` directory and refreshed when `HEAD` or `config`
change. Credentials in remote URLs are removed.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.events import Tag

LANGUAGES: dict[str, str] = {
    "py": "python", "pyi": "python", "pyx": "cython", "c": "c", "h": "c", "cc": "c++",
    "cpp": "c++", "cxx": "c++", "hpp": "c++", "hh": "c++", "cu": "cuda", "cuh": "cuda",
    "java": "java", "kt": "kotlin", "kts": "kotlin", "scala": "scala", "go": "go",
    "rs": "rust", "js": "javascript", "mjs": "javascript", "cjs": "javascript",
    "ts": "typescript", "tsx": "typescript", "jsx": "javascript", "rb": "ruby", "php": "php",
    "cs": "c#", "swift": "swift", "m": "objective-c", "mm": "objective-c", "r": "r",
    "jl": "julia", "lua": "lua", "pl": "perl", "pm": "perl", "sh": "shell", "bash": "shell",
    "zsh": "shell", "ps1": "powershell", "sql": "sql", "f90": "fortran", "f95": "fortran",
    "f": "fortran", "for": "fortran", "vhd": "vhdl", "vhdl": "vhdl", "v": "verilog",
    "sv": "systemverilog", "svh": "systemverilog", "proto": "protobuf", "dart": "dart",
    "hs": "haskell", "ml": "ocaml", "ex": "elixir", "exs": "elixir", "erl": "erlang",
    "clj": "clojure", "groovy": "groovy", "gradle": "groovy", "cmake": "cmake",
    "mk": "make", "asm": "assembly", "s": "assembly", "vb": "visual basic", "pas": "pascal",
    "ada": "ada", "adb": "ada", "zig": "zig", "nim": "nim", "sol": "solidity", "tcl": "tcl",
    "ipynb": "jupyter", "mat": "matlab", "scl": "plc-scl", "awl": "plc-awl",
    "pxd": "cython", "pxi": "cython", "metal": "metal", "glsl": "glsl", "vert": "glsl",
    "frag": "glsl", "comp": "glsl", "geom": "glsl", "tesc": "glsl", "tese": "glsl",
    "hlsl": "hlsl",
}  # fmt: skip
BASENAMES = {"makefile": "make", "cmakelists.txt": "cmake", "dockerfile": "dockerfile"}
_SHEBANG = re.compile(rb"^#!\s*(\S+)(?:[ \t]+(?:-\S+[ \t]+)*(\S+))?")
_SHEBANG_LANG = {
    "python": "python",
    "bash": "shell",
    "sh": "shell",
    "zsh": "shell",
    "dash": "shell",
}
_SHEBANG_LANG.update({"perl": "perl", "ruby": "ruby", "node": "javascript", "lua": "lua"})


def language_for(name: str, head: bytes) -> str | None:
    """The language of a source file from its name or `#!` line, else None."""
    base = name.rsplit("/", 1)[-1].lower()
    if base in BASENAMES:
        return BASENAMES[base]
    ext = base.rsplit(".", 1)[-1] if "." in base else ""
    if ext == "m":  # MATLAB or Objective-C
        return "objective-c" if b"@interface" in head or b"#import" in head else "matlab"
    if ext in LANGUAGES:
        return LANGUAGES[ext]
    if head.startswith(b"#!"):
        m = _SHEBANG.match(head[:256])
        if m:
            prog = m.group(1).rsplit(b"/", 1)[-1]
            if prog == b"env" and m.group(2):
                prog = m.group(2)
            word = prog.decode("ascii", "replace").rstrip("0123456789.")
            return _SHEBANG_LANG.get(word)
    return None


# --- git -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GitInfo:
    root: str
    remote: str | None
    commit: str | None
    branch: str | None


_cache: dict[str, tuple[tuple[int, int], GitInfo | None]] = {}
_lock = threading.Lock()
_CRED = re.compile(r"^(\w+://)[^@/]+@")
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a SHA-1 or SHA-256 commit id


_UNKNOWN = "\0"  # no directory is named this: the memo has no answer for it yet


class AncestorMemo:
    """The nearest directory, from `d` upwards, that passes `test` — memoised per directory.

    Every file event under a tree asks the same question of the same few directories;
    the answer for each directory walked is kept (up to `MAX_MEMO` directories, then the
    memo starts over), and a walk stops after 64 levels.
    """

    MAX_MEMO = 50_000

    def __init__(self, test: Callable[[str], bool]) -> None:
        self._test = test
        self._memo: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def nearest(self, d: str) -> str | None:
        hit = self._memo.get(d, _UNKNOWN)  # a dict read is atomic: no lock when known
        if hit is not _UNKNOWN:
            return hit
        seen: list[str] = []
        found: str | None = None
        for _ in range(64):
            with self._lock:
                if d in self._memo:
                    found = self._memo[d]
                    break
            seen.append(d)
            if self._test(d):
                found = d
                break
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        with self._lock:
            if len(self._memo) > self.MAX_MEMO:
                self._memo.clear()
            for s in seen:
                self._memo[s] = found
        return found


def _has_dot_git(d: str) -> bool:
    candidate = os.path.join(d, ".git")
    return os.path.isdir(candidate) or os.path.isfile(candidate)


_worktrees = AncestorMemo(_has_dot_git)


def _find_git_dir(start: str) -> tuple[str, str] | None:
    """(worktree root, git dir) above `start`, with per-directory memoisation."""
    result = _worktrees.nearest(os.path.dirname(os.path.abspath(start)))
    if result is None:
        return None
    return result, _resolve_git_dir(os.path.join(result, ".git"))


def _resolve_git_dir(dot_git: str) -> str:
    if os.path.isfile(dot_git):  # worktrees and submodules: "gitdir: <path>"
        try:
            with open(dot_git, encoding="utf-8", errors="replace") as f:
                line = f.read(4096).strip()
        except OSError:
            return dot_git
        if line.startswith("gitdir:"):
            target = line[7:].strip()
            return os.path.normpath(os.path.join(os.path.dirname(dot_git), target))
    return dot_git


def _read(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def _stamp(git_dir: str) -> tuple[int, int]:
    out = []
    for name in ("HEAD", "config"):
        try:
            out.append(os.stat(os.path.join(git_dir, name)).st_mtime_ns)
        except OSError:
            out.append(0)
    return out[0], out[1]


def git_info(path: str) -> GitInfo | None:
    """The repository that contains `path`, with remote and commit, or None."""
    found = _find_git_dir(path)
    if found is None:
        return None
    root, git_dir = found
    stamp = _stamp(git_dir)
    with _lock:
        hit = _cache.get(git_dir)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    info = _read_repo(root, git_dir)
    with _lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[git_dir] = (stamp, info)
    return info


def _read_repo(root: str, git_dir: str) -> GitInfo | None:
    head = _read(os.path.join(git_dir, "HEAD"), 4096)
    if head is None:
        return None
    common = git_dir
    commondir = _read(os.path.join(git_dir, "commondir"), 4096)
    if commondir:
        common = os.path.normpath(os.path.join(git_dir, commondir.strip()))
    branch, commit = resolve_head(head, git_dir, common)
    return GitInfo(root, _remote(common), commit, branch)


def resolve_head(head: str, git_dir: str, common: str) -> tuple[str | None, str | None]:
    """(branch, commit) from the text of HEAD: a symbolic ref is looked up as a loose ref
    (in `git_dir`, then the shared `common` dir of a worktree) or in packed-refs.

    A ref outside refs/ or holding `..` is not followed (it would name a file outside the
    git directory); a commit that is not a SHA-1 or SHA-256 object id is None.
    """
    head = head.strip()
    commit: str | None = None
    branch: str | None = None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref.removeprefix("refs/heads/")
        if ref.startswith("refs/") and ".." not in ref:
            value = _read(os.path.join(git_dir, ref), 4096) or _read(
                os.path.join(common, ref), 4096
            )
            commit = value.strip() if value else _packed_ref(common, ref)
    elif _OBJECT_ID.fullmatch(head):
        commit = head
    if commit is not None and not _OBJECT_ID.fullmatch(commit):
        commit = None
    return branch, commit


def _packed_ref(git_dir: str, ref: str) -> str | None:
    text = _read(os.path.join(git_dir, "packed-refs"), 16 << 20)
    if not text:
        return None
    for line in text.splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref:
            return sha
    return None


def config_remote_urls(git_dir: str) -> dict[str, str]:
    """Remote name -> its first `url = …` in the repository's config, in config order.

    URLs are returned as written (credentials included) so each caller strips them its way.
    """
    text = _read(os.path.join(git_dir, "config"), 1 << 20)
    if not text:
        return {}
    section = None
    urls: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            m = re.match(r'\[\s*remote\s+"([^"]*)"\s*\]', line)
            section = m.group(1) if m else None
        elif section is not None and "=" in line:
            key, _, value = line.partition("=")
            if key.strip().lower() == "url" and section not in urls:
                urls[section] = value.strip().strip('"')
    return urls


def _remote(git_dir: str) -> str | None:
    """The URL of `origin` (else the first remote) from the repository's config."""
    urls = config_remote_urls(git_dir)
    url = urls.get("origin") or next(iter(urls.values()), None)
    return _CRED.sub(r"\1", url) if url else None


def source_tag(language: str, path: str | None) -> Tag:
    info = git_info(path) if path else None
    details: dict[str, object] = {"language": language, "git_remote": None, "git_commit": None}
    evidence = f"{language} source"
    if info is not None:
        details.update(git_remote=info.remote, git_commit=info.commit, git_root=info.root)
        where = info.remote or f"local repository {Path(info.root).name}"
        evidence += f" in git repository {where}"
        if info.commit:
            evidence += f" at {info.commit[:12]}"
    return Tag("source_code", evidence, details)


# --- git bundles ---------------------------------------------------------------------
# `git bundle create` writes a text header (signature, v3 capabilities, prerequisites,
# one "<oid> <refname>" line per ref, a blank line) and then a packfile: a whole
# repository's history in one file, so policy treats it as a source archive.
_BUNDLE_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")
_BUNDLE_REF = re.compile(rb"^([0-9a-f]{40}|[0-9a-f]{64}) (\S+)$")


def is_git_bundle(head: bytes) -> bool:
    return head.startswith(_BUNDLE_SIGNATURES)


def git_bundle_tags(head: bytes) -> list[Tag]:
    """The tags of a git bundle from its header in `head` (the packfile is not read).

    Only `head` (the first 64 KiB) is looked at, so the work is bounded; a header longer
    than that is reported with the refs seen so far.
    """
    refs = 0
    commit: str | None = None
    complete = False
    for line in head.split(b"\n")[1:]:
        if not line:
            complete = True
            break
        if line.startswith((b"-", b"@")):  # prerequisites, v3 capabilities
            continue
        m = _BUNDLE_REF.match(line)
        if m:
            refs += 1
            commit = commit or m.group(1).decode()
    evidence = f"git bundle, {refs} ref(s)" + ("" if complete else ", header past 64 KiB")
    archive = Tag(
        "archive",
        evidence,
        {"format": "git_bundle", "members": None, "nested_kinds": ["source_code"], "refs": refs},
    )
    code = Tag(
        "source_code",
        "repository history in a git bundle",
        # `detector`: the history is the bundle's, not that of a repository it sits in
        {"language": None, "git_remote": None, "git_commit": commit, "detector": "git_bundle"},
    )
    return [archive, code]
