"""The two-namespace test rig: a sender and a peer namespace joined by a veth pair.

Namespaces are named `ea-<token>-s` / `ea-<token>-p` (the token: this process's pid and
a count, so concurrent test processes never collide) and addressed in 10.200.N.0/30 and
fd00:200:N::/64, all created and deleted by the tests. Threads enter a namespace
with setns(2), which for network namespaces changes only the calling thread: sockets
created while inside stay in that namespace, so the in-process sensor, the senders and
the peer's servers can all run in the test process.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
_MADE = itertools.count()  # rigs made by this process
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Rig:
    name: str
    sender_ns: str
    peer_ns: str
    sender_if: str
    peer_if: str
    sender_v4: str
    peer_v4: str
    sender_v6: str
    peer_v6: str

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block with this thread in namespace `ns`, then return."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{ns}")
            try:
                yield
            finally:
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "cannot return to the test's namespace")
        finally:
            os.close(home)

    def sender(self) -> contextlib.AbstractContextManager[None]:
        return self.inside(self.sender_ns)

    def peer(self) -> contextlib.AbstractContextManager[None]:
        return self.inside(self.peer_ns)

    def run_in(self, ns: str, target: Callable[..., Any], *args: Any) -> threading.Thread:
        """Start `target(*args)` on a thread that lives in namespace `ns`."""

        def body() -> None:
            _setns(f"/run/netns/{ns}")
            target(*args)

        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    def add_link(self) -> None:
        """Create the veth pair between the namespaces and address both ends."""
        _ip("link", "add", self.sender_if, "type", "veth", "peer", "name", self.peer_if)
        _ip("link", "set", self.sender_if, "netns", self.sender_ns)
        _ip("link", "set", self.peer_if, "netns", self.peer_ns)
        for ns, ifname, v4, v6 in (
            (self.sender_ns, self.sender_if, self.sender_v4, self.sender_v6),
            (self.peer_ns, self.peer_if, self.peer_v4, self.peer_v6),
        ):
            _ip("-n", ns, "addr", "add", f"{v4}/30", "dev", ifname)
            _ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", ifname, "up")

    def del_link(self) -> None:
        _ip("-n", self.sender_ns, "link", "del", self.sender_if)

    def exec(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.netns_exec(ns), *argv], **kw)

    @staticmethod
    def netns_exec(ns: str) -> list[str]:
        """The command prefix that runs a program inside `ns` (it execs the program, so
        the child's pid is the program's own and signals reach it)."""
        return ["ip", "netns", "exec", ns]


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not installed"
    return None


@contextlib.contextmanager
def make_rig() -> Iterator[Rig]:
    seq = next(_MADE)
    token = f"{os.getpid():x}{seq % 256:02x}"  # interface names: at most 15 bytes
    n = seq % 256
    rig = Rig(
        name=token,
        sender_ns=f"ea-{token}-s",
        peer_ns=f"ea-{token}-p",
        sender_if=f"ea{token}s",
        peer_if=f"ea{token}p",
        sender_v4=f"10.200.{n}.1",
        peer_v4=f"10.200.{n}.2",
        sender_v6=f"fd00:200:{n:x}::1",
        peer_v6=f"fd00:200:{n:x}::2",
    )
    created: list[str] = []
    try:
        for ns in (rig.sender_ns, rig.peer_ns):
            _ip("netns", "add", ns)
            created.append(ns)
        rig.add_link()
        for ns in created:
            _ip("-n", ns, "link", "set", "lo", "up")
        yield rig
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def free_port_in(rig: Rig, ns: str, family: int = socket.AF_INET) -> int:
    with rig.inside(ns), socket.socket(family) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
