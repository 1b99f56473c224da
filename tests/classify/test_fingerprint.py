"""Hashes started ahead (`agent.fingerprint.HashAhead`) and the classifier claiming them."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.classify.classifier import Classifier
from agent.classify.hashing import HashCache
from agent.fingerprint import Abandoned, FileChanged, HashAhead, ident_of, sha256_fd

MIB = 1 << 20


def hashed_bytes() -> float:
    return REGISTRY.get_sample_value("egress_agent_hashed_bytes_total") or 0.0


def big_file(path: Path, mib: int) -> str:
    block = random.Random(f"{path.name}:{mib}").randbytes(MIB)  # one content per call
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)
            h.update(block)
    return h.hexdigest()


def fds_on(*paths: Path) -> set[int]:
    """This process's descriptors open on `paths` (not a count of all: other threads —
    the metrics server, a pool worker — open and close descriptors of their own while a
    test runs, and a count moved by one of them failed the suite once)."""
    wanted = {str(p) for p in paths}
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed between the listing and the readlink
            continue
        if target in wanted:
            found.add(int(name))
    return found


def test_sha256_fd_stops_when_asked_and_notices_a_short_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 3000)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert sha256_fd(fd, 3000, buf_size=1024) == (hashlib.sha256(b"x" * 3000).hexdigest(), 3000)
        stop = threading.Event()
        stop.set()
        with pytest.raises(Abandoned):
            sha256_fd(fd, 3000, stop=stop)
        with pytest.raises(FileChanged) as e:
            sha256_fd(fd, 5000)
        assert e.value.read == 3000
    finally:
        os.close(fd)


def test_claimed_hash_is_the_file_hash(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    want = big_file(p, 20)
    assert fds_on(p) == set()
    ahead = HashAhead([str(p), str(tmp_path / "missing"), str(tmp_path)], min_size=16 * MIB)
    future = ahead.claim(ident_of(os.stat(p)), needed=True)
    assert future is not None
    assert future.result(30) == (want, 20 * MIB)
    assert ahead.claim(ident_of(os.stat(p)), needed=True) is None  # handed over once
    ahead.close()
    assert fds_on(p, tmp_path) == set()  # the hash's own descriptors are closed


def test_unneeded_hash_is_stopped_and_small_files_are_left_alone(tmp_path: Path) -> None:
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big_file(big, 128)  # hashing it takes longer than the claim below
    small.write_bytes(b"s" * 1000)
    assert fds_on(big, small) == set()
    ahead = HashAhead([str(big), str(small)], min_size=16 * MIB)
    assert ahead.claim(ident_of(os.stat(small)), needed=True) is None
    job = ahead._jobs[ident_of(os.stat(big))][0]
    assert ahead.claim(ident_of(os.stat(big)), needed=False) is None
    with pytest.raises(Abandoned):
        job.result(30)
    ahead.close()
    assert fds_on(big, small) == set()


def test_a_file_replaced_after_the_start_is_not_matched(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    big_file(p, 17)
    ahead = HashAhead([str(p)], min_size=16 * MIB)
    before = ident_of(os.stat(p))
    p.unlink()
    big_file(p, 18)
    assert ahead.claim(ident_of(os.stat(p)), needed=True) is None
    assert ahead.claim(before, needed=True) is not None
    ahead.close()


def test_classifier_uses_the_ahead_hash_and_drops_it_on_a_cache_hit(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    want = big_file(p, 128)  # big enough to be still hashing at the claim
    cache = HashCache(tmp_path / "cache.db")
    try:
        first = Classifier(cache=cache, ahead=HashAhead([str(p)], min_size=16 * MIB))
        before = hashed_bytes()
        assert first.classify_path(str(p)).sha256 == want
        first.close()
        assert hashed_bytes() - before == 128 * MIB  # hashed once, by the ahead thread

        ahead = HashAhead([str(p)], min_size=16 * MIB)
        job = ahead._jobs[ident_of(os.stat(p))][0]
        second = Classifier(cache=cache, ahead=ahead)
        before = hashed_bytes()
        assert second.classify_path(str(p)).sha256 == want
        second.close()
        with pytest.raises(Abandoned):  # the cache knew it: the early hash was stopped
            job.result(30)
        assert hashed_bytes() == before
    finally:
        cache.close()
