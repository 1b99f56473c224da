"""Bounded queues and stages: ordering, back-pressure, counted drops, drain on stop."""

from __future__ import annotations

import threading
import time

from agent import metrics
from agent.events import Event, FileAction, FileEvent
from agent.pipeline import BoundedQueue, Pipeline, StageSpec
from tests.conftest import registry_value


def _dropped(queue: str) -> float:
    for m in metrics.DROPPED.collect():
        for s in m.samples:
            if s.name.endswith("_total") and s.labels == {"queue": queue, "reason": "queue_full"}:
                return s.value
    return 0.0


def test_full_queue_drops_and_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue("test-full", 2)
    before = _dropped("test-full")
    assert q.put(1, timeout=0) and q.put(2, timeout=0)
    assert not q.put(3, timeout=0.01)
    assert _dropped("test-full") == before + 1


def test_stages_run_in_order_and_stop_drains() -> None:
    seen: list[str] = []
    gate = threading.Event()

    def slow(e: Event) -> Event:
        gate.wait()
        return e

    def mark(e: Event) -> Event:
        assert isinstance(e, FileEvent)
        return FileEvent(e.action, e.path + "+", uid=e.uid)

    p = Pipeline(
        [StageSpec("t-slow", slow), StageSpec("t-mark", mark)],
        [lambda e: seen.append(e.path) if isinstance(e, FileEvent) else None],
        queue_size=1000,
    )
    p.start()
    for i in range(500):
        assert p.emit(FileEvent(FileAction.WRITTEN, f"/p/{i}"))
    gate.set()
    p.stop()  # returns only when every queued event reached the sink
    assert seen == [f"/p/{i}+" for i in range(500)]


def test_failing_stage_passes_event_on_and_counts() -> None:
    out: list[Event] = []

    def broken(e: Event) -> Event:
        raise RuntimeError("bug")

    p = Pipeline([StageSpec("t-broken", broken)], [out.append], queue_size=10)
    p.start()
    p.emit(FileEvent(FileAction.CREATED, "/a"))
    p.stop()
    assert len(out) == 1
    errors = [
        s.value
        for m in metrics.STAGE_ERRORS.collect()
        for s in m.samples
        if s.labels.get("stage") == "t-broken" and s.name.endswith("_total")
    ]
    assert errors == [1.0]


def test_linger_gathers_a_trickle_into_one_batch() -> None:
    q: BoundedQueue[int] = BoundedQueue("test-linger", 100)
    q.put(0)

    def trickle() -> None:
        for i in range(1, 4):
            time.sleep(0.02)
            q.put(i)

    t = threading.Thread(target=trickle)
    t.start()
    items, done = q.get_batch(100, None, linger=0.5)
    t.join()
    assert (items, done) == ([0, 1, 2, 3], False)
    q.put(4)
    assert q.get_batch(100, None) == ([4], False)  # without linger: what is there now


def test_linger_never_delays_a_full_batch_or_a_stop() -> None:
    q: BoundedQueue[int] = BoundedQueue("test-linger-full", 100)
    for i in range(5):
        q.put(i)
    started = time.monotonic()
    assert q.get_batch(3, None, linger=30) == ([0, 1, 2], False)  # full: no wait
    threading.Timer(0.05, q.put_stop).start()
    assert q.get_batch(10, None, linger=30) == ([3, 4], True)  # the stop ends the wait
    assert time.monotonic() - started < 5


def test_without_stages_a_dispatch_thread_delivers() -> None:
    out: list[Event] = []
    p = Pipeline([], [out.append], queue_size=10)
    p.start()
    e = FileEvent(FileAction.CREATED, "/a")
    p.emit(e)
    p.stop()
    assert out == [e]


def test_put_many_waits_for_room_in_order_and_counts_what_it_drops() -> None:
    q: BoundedQueue[int] = BoundedQueue("test-many", 3)
    got: list[int] = []

    def consume() -> None:
        while len(got) < 10:
            items, _ = q.get_batch(2, 5.0)
            got.extend(items)

    t = threading.Thread(target=consume)
    t.start()
    assert q.put_many(list(range(10)), timeout=None) == 10  # more than fits: waits for room
    t.join()
    assert got == list(range(10))
    before = _dropped("test-many")
    assert q.put_many([1, 2], timeout=0) == 2
    assert q.put_many([3, 4, 5], timeout=0.01) == 1  # one place left
    assert _dropped("test-many") == before + 2
    assert q.get_batch(10, 0) == ([1, 2, 3], False)
    assert q.get_batch(10, 0.01) == ([], False)


class _BatchCollector:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def submit(self, e: Event) -> None:
        self.batches.append([e.path] if isinstance(e, FileEvent) else [])

    def submit_many(self, events: list[Event]) -> None:
        self.batches.append([e.path for e in events if isinstance(e, FileEvent)])


def test_a_sink_with_submit_many_gets_whole_batches() -> None:
    gate = threading.Event()

    def held(e: Event) -> Event:
        gate.wait()
        return e

    batched, single = _BatchCollector(), list[Event]()
    p = Pipeline([StageSpec("t-held", held)], [batched.submit, single.append], queue_size=1000)
    p.start()
    for i in range(300):
        assert p.emit(FileEvent(FileAction.WRITTEN, f"/b/{i}"))
    gate.set()
    p.stop()
    paths = [f"/b/{i}" for i in range(300)]
    assert [path for b in batched.batches for path in b] == paths
    assert len(batched.batches) < 300  # batches, not one call per event
    assert [e.path for e in single if isinstance(e, FileEvent)] == paths  # plain sinks: per event


def test_a_stage_that_shares_a_thread_runs_after_the_one_before_it() -> None:
    """`shares_thread`: one thread runs both stages on each batch, in order; each stage
    still counts what it took and passed on, and a stop drains both."""
    threads: dict[str, set[str]] = {"t-first": set(), "t-second": set()}

    def first(e: Event) -> Event:
        threads["t-first"].add(threading.current_thread().name)
        assert isinstance(e, FileEvent)
        return FileEvent(e.action, e.path + "+1", uid=e.uid)

    def second(e: Event) -> Event | None:
        threads["t-second"].add(threading.current_thread().name)
        assert isinstance(e, FileEvent)
        if e.path.startswith("/noise/"):
            return None  # a stage may drop noise deliberately
        return FileEvent(e.action, e.path + "+2", uid=e.uid)

    def counts() -> list[float]:
        return [
            registry_value(f"egress_agent_stage_events_{way}_total", {"stage": stage})
            for way in ("in", "out")
            for stage in threads
        ]

    before = counts()
    out: list[Event] = []
    p = Pipeline(
        [StageSpec("t-first", first), StageSpec("t-second", second, shares_thread=True)],
        [out.append],
        queue_size=1000,
    )
    p.start()
    for i in range(300):
        assert p.emit(FileEvent(FileAction.WRITTEN, f"/p/{i}" if i % 3 else f"/noise/{i}"))
    p.stop()
    assert [e.path for e in out if isinstance(e, FileEvent)] == [
        f"/p/{i}+1+2" for i in range(300) if i % 3
    ]
    assert threads == {
        "t-first": {"stage-t-first+t-second"},
        "t-second": {"stage-t-first+t-second"},
    }
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [300, 300, 300, 200]
