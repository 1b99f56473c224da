"""The feedback edge: the two hold times and how incidents ask the file sensor for reads."""

from __future__ import annotations

import pytest

from agent import feedback, pipeline
from agent.feedback import FLOW_HOLD, READ_HOLD, ReadWatch
from agent.incidents import service
from agent.sensors.files import attribution
from agent.sensors.files import handover as files_handover


def test_a_flow_waits_long_enough_for_the_read_before_it() -> None:
    """A read reaches correlation after fanotify's gather, the sensor's hold for the pid,
    the first stage's linger and the correlator's own batch linger; what those fixed
    delays add up to must leave FLOW_HOLD at least as much again for the stages' work
    (a read is classified from the hash cache only)."""
    fixed = attribution.GATHER + READ_HOLD + pipeline.LINGER + service.BATCH_LINGER
    assert 2 * fixed <= FLOW_HOLD


def test_sensor_and_correlator_use_the_one_source() -> None:
    assert files_handover.READ_HOLD is feedback.READ_HOLD
    assert service.FLOW_HOLD is feedback.FLOW_HOLD
    assert not hasattr(files_handover, "HOLD")  # no second copy to drift


def test_asks_wait_for_a_sensor_then_each_path_once() -> None:
    marked: list[str] = []
    reads = ReadWatch()
    reads.ask("/data/a.safetensors")  # before the sensor started: asked again later
    reads.attach(lambda p: marked.append(p) or True)
    for path in ("/data/a.safetensors", "/data/b.gguf", "/data/a.safetensors"):
        reads.ask(path)
    assert marked == ["/data/a.safetensors", "/data/b.gguf"]


def test_a_path_the_sensor_failed_on_is_asked_again() -> None:
    calls: list[str] = []

    def flaky(path: str) -> bool:
        calls.append(path)
        if len(calls) == 1:
            raise OSError("fanotify mark failed")
        return True

    reads = ReadWatch()
    reads.attach(flaky)
    reads.ask("/data/x.tgz")
    reads.ask("/data/x.tgz")
    reads.ask("/data/x.tgz")
    assert calls == ["/data/x.tgz", "/data/x.tgz"]


def test_the_oldest_paths_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedback, "MAX_ASKED", 2)
    marked: list[str] = []
    reads = ReadWatch()
    reads.attach(lambda p: marked.append(p) or False)  # a mark refused is still not re-asked
    for path in ("/a", "/b", "/c", "/b", "/a"):
        reads.ask(path)
    assert marked == ["/a", "/b", "/c", "/a"]
