"""`new_uid`: the idempotency key of every event in a fleet store must never repeat."""

from __future__ import annotations

import itertools
import os
import re

import pytest

from agent import events
from agent.events import new_uid


def test_uids_are_32_hex_digits_and_distinct() -> None:
    uids = [new_uid() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)
    assert len(set(uids)) == len(uids)


def test_a_forked_child_draws_its_own_prefix() -> None:
    """The scan forks workers: a child continuing the parent's counter under the same
    prefix would hand out the parent's next ids."""
    mine = new_uid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, new_uid().encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert child[:24] != mine[:24]
    assert new_uid()[:24] == mine[:24]


def test_the_prefix_is_drawn_again_when_the_counter_is_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "_uid_state", ("ab" * 12, itertools.count(0xFFFFFFFF)))
    last = new_uid()
    assert last == "ab" * 12 + "ffffffff"
    fresh = new_uid()
    assert fresh[:24] != "ab" * 12 and fresh[24:] == "00000000"
