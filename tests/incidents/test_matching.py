"""Matching on its own: which touches a flow carried, by relation, size and time (pure)."""

from __future__ import annotations

from datetime import timedelta

from agent.events import FileAction, MatchMethod, ProcessInfo
from agent.incidents.ancestry import Ancestry
from agent.incidents.matching import MIN_UNATTRIBUTED_BYTES, Touch, TouchWindow
from tests.incidents.helpers import ARCHIVE, CKPT, CURL, OTHER, SHELL, SIZE, TAR, at, fev
from tests.incidents.helpers import archive as archive_artefact
from tests.incidents.helpers import flow as make_flow
from tests.incidents.helpers import weights as weights_artefact


def window(tolerance: float = 0.1) -> TouchWindow:
    ancestry = Ancestry(proc=None)
    for p in (SHELL, TAR, CURL, OTHER):
        ancestry.learn(p.pid, p.ppid)
    return TouchWindow(timedelta(seconds=900), tolerance, ancestry)


def touch(t: float, process: ProcessInfo | None, sha: str = CKPT, size: int = SIZE) -> Touch:
    artefact = weights_artefact(sha, size)
    return Touch(fev(FileAction.READ, f"/d/{sha[:6]}", t, artefact, process), sha, size)


def test_the_closest_relation_wins_over_the_closest_size() -> None:
    w = window()
    own = touch(0, CURL, size=SIZE + 3_000_000)  # the uploader's own read, bytes further off
    parent = touch(1, SHELL, sha=ARCHIVE)  # its parent's, bytes exact
    match = w.match(make_flow(2, 5, SIZE), [parent, own])
    assert match is not None
    assert match.method == MatchMethod.SAME_PROCESS and match.touches == (own,)


def test_a_parent_reading_is_a_child_process_match() -> None:
    match = window().match(make_flow(2, 5, SIZE), [touch(0, SHELL)])
    assert match is not None and match.method == "child_process"  # a StrEnum is its string


def test_an_unrelated_process_never_matches() -> None:
    assert window().match(make_flow(2, 5, SIZE), [touch(0, OTHER)]) is None


def test_two_artefacts_sent_together_match_as_one() -> None:
    w = window()
    a, b = touch(0, CURL, CKPT, 30_000_000), touch(1, CURL, ARCHIVE, 20_000_000)
    match = w.match(make_flow(2, 5, 50_000_000), [a, b])
    assert match is not None and match.file_bytes == 50_000_000
    assert set(match.touches) == {a, b}


def test_bytes_outside_the_tolerance_do_not_match() -> None:
    w = window(tolerance=0.1)
    assert w.comparable(SIZE, int(SIZE * 1.1)) and not w.comparable(SIZE, int(SIZE * 1.11))
    assert not w.comparable(0, 10) and not w.comparable(10, 0)
    assert w.match(make_flow(2, 5, SIZE * 2), [touch(0, CURL)]) is None


def test_unattributed_touches_match_only_while_no_file_event_named_its_process() -> None:
    w = window()
    small = touch(0, None, sha=ARCHIVE, size=MIN_UNATTRIBUTED_BYTES - 1)
    big = touch(0, None)
    for t in (small, big):
        w.add_touch(t)
    flow = make_flow(2, 5, SIZE)
    assert w.candidates(flow) == [small, big]
    match = w.match(flow, w.candidates(flow))
    assert match is not None and match.method == MatchMethod.SIZE_AND_TIME
    assert match.touches == (big,)  # bytes and time alone need a sizeable artefact
    w.file_attribution = True
    assert w.candidates(flow) == [] and w.match(flow, [big]) is None


def test_touches_and_flows_expire_with_the_window() -> None:
    w = window()
    old, new = touch(0, CURL), touch(600, CURL, sha=ARCHIVE)
    w.add_touch(old)
    w.add_touch(new)
    w.add_flow(make_flow(0, 1, SIZE), None)
    w.expire(at(1) + timedelta(seconds=900 + 5 + 1))  # the flow ended at 1 s: window, skew, 1 s
    assert w.candidates(make_flow(900, 905, SIZE)) == [new]
    assert w.flows() == []


def test_a_touch_after_the_flow_ended_is_outside_it() -> None:
    late = touch(20, CURL, size=archive_artefact().size)
    assert window().match(make_flow(0, 10, SIZE), [late]) is None  # more than 5 s of skew
