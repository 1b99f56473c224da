"""Socket inode → pid: the hot-process path reads the last matched fd first and stops."""

from __future__ import annotations

import os
import socket

import pytest

from agent.sensors.network import procindex
from agent.sensors.network.procindex import ProcIndex


def _inode(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def _readlinks_to_find(idx: ProcIndex, s: socket.socket) -> list[str]:
    """The fd links `idx` reads to find this process by the socket `s` (and it finds it)."""
    reads: list[str] = []
    real = os.readlink

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(procindex.os, "readlink", counting)
        assert idx.pid_of(_inode(s)) == os.getpid()
    return reads


def test_next_socket_on_a_reused_fd_is_found_with_one_readlink() -> None:
    idx = ProcIndex()
    first = socket.socket()
    assert idx.pid_of(_inode(first)) == os.getpid()  # a full walk makes this pid hot
    fd = first.fileno()
    first.close()
    second = socket.socket()  # the lowest free fd: the one `first` had
    assert second.fileno() == fd
    reads = _readlinks_to_find(idx, second)
    second.close()
    assert reads == [f"/proc/{os.getpid()}/fd/{fd}"]
    assert idx.full_scans == 1


def test_a_socket_on_another_fd_of_a_hot_process_is_still_found() -> None:
    idx = ProcIndex()
    a = socket.socket()
    assert idx.pid_of(_inode(a)) == os.getpid()
    b = socket.socket()  # a new fd while `a` stays open: the hint does not hold it
    with a, b:
        assert idx.pid_of(_inode(b)) == os.getpid()
        assert idx.pid_of(_inode(a)) == os.getpid()  # and the first is still known
    assert idx.full_scans == 1


def test_an_unknown_inode_is_none_never_guessed() -> None:
    idx = ProcIndex(budget=0.0, burst=0.0)  # no full walk allowed
    with socket.socket() as s:
        assert idx.pid_of(_inode(s)) is None


def test_a_new_fd_of_a_hot_process_is_read_before_the_old_ones() -> None:
    """Past the hint, fds absent from the last search are read first: a process with
    many open files finds its new socket in a readlink or two, not one per fd."""
    idx = ProcIndex()
    first = socket.socket()
    files = [open(os.devnull, "rb") for _ in range(40)]  # noqa: SIM115 (closed below)
    assert idx.pid_of(_inode(first)) == os.getpid()
    assert idx.pid_of(_inode(first)) == os.getpid()  # a hot search: the fds are seen
    second = socket.socket()  # a new, higher fd: `first` still holds the hinted one
    reads = _readlinks_to_find(idx, second)
    for f in files:
        f.close()
    first.close()
    second.close()
    assert len(reads) <= 3, reads  # the hint, then the new fd (not 40 files)


def test_no_proc_walk_for_a_socket_that_closed_meanwhile() -> None:
    idx = ProcIndex()
    gone = socket.socket()
    inode = _inode(gone)
    gone.close()
    assert idx.pid_of(inode, still_open=lambda: False) is None
    assert (idx.full_scans, idx.skipped_scans) == (0, 1)
    assert idx.pid_of(inode, still_open=lambda: True) is None  # open elsewhere: walk
    assert idx.full_scans == 1


def test_fd_order_reads_new_then_socket_fds_first() -> None:
    seen: dict[str, int | None] = {"0": None, "3": 77, "4": None, "5": 78}
    order = procindex._likely_first(["0", "3", "4", "5", "6", "9"], seen)
    assert order == ["6", "9", "3", "5", "0", "4"]  # every fd, new ones first
