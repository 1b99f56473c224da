"""What `run` needs from the host, checked before it starts — and by `config check`.

A config can be valid as data and still be refused at start: a state directory that
cannot be created or written, a metrics address the host does not have. Operators run
`config check` in their deployment pipeline and expect it to catch everything `run`
would refuse, so both call `problems()`; each problem is one sentence naming the key.
An address already in use is not a config problem (the agent may be running while the
check runs), so only addresses the host cannot bind at all are reported.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import Settings

_NOT_MINE = {errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM, errno.EAFNOSUPPORT}


def problems(settings: Settings) -> list[str]:
    """Every host-side reason `run` would refuse this config; empty when none."""
    out = []
    state = _state_dir_problem(settings.agent.state_dir)
    if state:
        out.append(state)
    if settings.metrics.enabled:
        listen = _listen_problem(settings.metrics.listen)
        if listen:
            out.append(listen)
    return out


def _state_dir_problem(path: Path) -> str | None:
    existing = path
    while not existing.exists():  # the nearest ancestor that exists decides
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"agent.state_dir {path}: {existing} is not a directory"
    what = "write to" if existing == path else "create it under"
    try:  # root passes every access() check, so ask the file system itself
        probe = tempfile.mkdtemp(prefix=".egress-agent-check-", dir=existing)
        os.rmdir(probe)
    except OSError as e:
        return f"agent.state_dir {path}: cannot {what} {existing} ({_reason(e)})"
    return None


def _listen_problem(listen: str) -> str | None:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        return f"metrics.listen {listen}: cannot resolve {host!r} ({_reason(e)})"
    family, kind, proto, _name, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as e:
        if e.errno in _NOT_MINE:
            return f"metrics.listen {listen}: this host cannot listen there ({_reason(e)})"
    return None


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
