"""Which repository a git process works on, and what its flow did (push or fetch).

A flow of `git`, of its transports (`git-remote-https`, `git-send-pack`) or of an `ssh`
that git runs (`ssh host "git-receive-pack '/path'"`) is tied to the repository the
process works in — its cwd (`ProcessInfo.cwd`, read by the network sensor while the
socket lives) and its `-C`/`--git-dir` arguments — and to the URL it pushes to (its
arguments, a remote name looked up in the config, else origin). The policy stage puts
the result on the flow (`Flow.repository`) so policy sees `repository.*` facts.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent.classify.repository import is_approved, remote_host, repository_in, strip_credentials
from agent.events import Flow, ProcessInfo

GIT_TRANSPORTS = frozenset(
    {"git", "git-remote-https", "git-remote-http", "git-send-pack", "git-remote-ftp"}
)
_PUSH_WORDS = frozenset({"push", "send-pack", "git-send-pack", "git-receive-pack"})
_FETCH_WORDS = frozenset({"fetch", "clone", "pull", "ls-remote", "git-upload-pack", "fetch-pack"})
_GLOBAL_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"})


@dataclass(frozen=True, slots=True)
class GitCommand:
    """What a git process is doing, from its command line."""

    directory: str | None  # where it works: -C/--git-dir against its cwd
    direction: str  # push | fetch | unknown
    url: str | None  # the remote URL or name it named, if any


def git_command(proc: ProcessInfo | None) -> GitCommand | None:
    """The git work of `proc` (git, its transports, or ssh run by git), else None."""
    if proc is None or not proc.cmdline or "git" not in proc.cmdline:
        return None  # every flow passes here: most are gone after one substring test
    try:
        argv = shlex.split(proc.cmdline, posix=True)
    except ValueError:
        argv = proc.cmdline.split()
    if not argv:
        return None
    prog = os.path.basename(argv[0])
    exe = os.path.basename(proc.exe or "")
    cwd = proc.cwd
    if prog == "ssh" or exe == "ssh":
        return _ssh_command(argv, cwd)
    if prog not in GIT_TRANSPORTS and exe not in GIT_TRANSPORTS:
        return None
    if prog.startswith("git-remote-"):  # git-remote-https <remote> <url>
        url = argv[2] if len(argv) > 2 else (argv[1] if len(argv) > 1 else None)
        return GitCommand(cwd, "unknown", strip_credentials(url) if url else None)
    if prog == "git-send-pack":
        rest = [a for a in argv[1:] if not a.startswith("-")]
        return GitCommand(cwd, "push", strip_credentials(rest[0]) if rest else None)
    directory = cwd
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in _GLOBAL_WITH_VALUE and not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        if key in ("-C", "--git-dir") and value:
            directory = os.path.join(directory or "/", value)
        i += 1
    sub = argv[i] if i < len(argv) else ""
    direction = "push" if sub in _PUSH_WORDS else "fetch" if sub in _FETCH_WORDS else "unknown"
    url = None
    if direction == "push":
        rest = [a for a in argv[i + 1 :] if not a.startswith("-")]
        url = strip_credentials(rest[0]) if rest else None
    return GitCommand(directory, direction, url)


def _ssh_command(argv: list[str], cwd: str | None) -> GitCommand | None:
    """`ssh [opts] [-p port] [user@]host "git-receive-pack '/path'"` as git runs it."""
    for i, arg in enumerate(argv[1:], start=1):
        words = arg.split(None, 1)
        if not words or words[0] not in ("git-receive-pack", "git-upload-pack"):
            continue
        direction = "push" if words[0] == "git-receive-pack" else "fetch"
        path = words[1] if len(words) > 1 else (argv[i + 1] if i + 1 < len(argv) else "")
        path = path.strip("'\"")
        host = argv[i - 1] if i > 1 else ""
        port = next((argv[j + 1] for j in range(1, i - 1) if argv[j] == "-p"), "")
        if not host or host.startswith("-"):
            return GitCommand(cwd, direction, None)
        where = f"{host}:{port}" if port else host
        url = f"ssh://{where}{'' if path.startswith('/') else '/'}{path}"
        return GitCommand(cwd, direction, strip_credentials(url))
    return None


def flow_repository(flow: Flow, approved: Iterable[str]) -> dict[str, Any] | None:
    """The repository a git flow carried, as `Flow.repository`, or None for other flows.

    The push URL comes from the command line (a remote name is looked up in the config),
    else origin. The direction is the command's; a transport that does not say (the
    `git-remote-https` helper serves both) is a push when it sent more than it received —
    fetches and clones send little and receive the pack.
    """
    cmd = git_command(flow.process)
    if cmd is None or not cmd.directory:
        return None
    repo = repository_in(cmd.directory)
    if repo is None:
        return None
    doc = repo.doc()
    url = cmd.url
    if url is not None and remote_host(url) is None and not url.startswith(("/", ".")):
        url = dict(repo.remotes).get(url, url)  # a remote name
    url = url or repo.remote
    direction = cmd.direction
    if direction == "unknown":
        direction = "push" if flow.bytes_out > flow.bytes_in else "fetch"
    dest = flow.sni or flow.name or flow.dst_ip
    doc.update(
        push_url=url,
        push_host=(remote_host(url) if url else None) or dest,
        direction=direction,
        # the URL git was given decides; the destination's name only when it has no host
        approved=is_approved(url, approved)
        if url and remote_host(url)
        else is_approved(dest, approved),
    )
    return doc


def with_repository(flow: Flow, approved: Iterable[str]) -> Flow:
    """`flow` with its `repository` filled when a git process sent it."""
    if flow.repository is not None or flow.process is None:
        return flow
    doc = flow_repository(flow, approved)
    if doc is None:
        return flow
    return replace(flow, repository=doc)
