"""Bounded queues and stage threads between sensors and the store.

Sensors `emit()` into the first queue; each stage (classify, policy) takes a batch of
events and enriches them, in a thread of its own that puts the batch on the next queue,
or in the thread of the stage before it (`StageSpec.shares_thread`: one hand-over and
wake-up less per batch); the last stage's thread hands what comes out to the sinks (the
store writer, the correlator), whose own queues decouple them — a batch at a time where
the sink takes batches, so a burst costs a lock and a wake-up per batch and hop, not per
event. The first stage waits up to `LINGER` after an event for others, so that events
arriving one by one wake each thread once per burst (a flood is never held up). Every
queue is bounded: when a producer cannot put within its patience the event is dropped
and counted in `egress_agent_events_dropped_total{queue,reason}` — never silently. A stop
walks a sentinel down the pipeline so that everything queued before it is processed
and flushed before the threads are joined. Each stage loop runs supervised
(`liveness`): it beats per batch and per event, and one that fails is restarted, not
lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from agent import metrics
from agent.events import Event
from agent.liveness import HEARTBEATS, Heartbeat, supervised

log = logging.getLogger(__name__)

T = TypeVar("T")
STAGE_BATCH = 256  # events a stage thread takes from its queue at once
LINGER = 0.05  # seconds the first stage waits for more events once one came


class _Stop:
    """The sentinel that tells a consumer everything before it has been seen."""


STOP = _Stop()


class BoundedQueue(Generic[T]):
    """A bounded FIFO between threads that counts its depth and what it had to drop.

    Not `queue.Queue`: a burst moves every event through three or four of these, and
    `queue.Queue` takes its lock and signals a condition for each item on each side. Here
    `put_many` and `get_batch` move a whole batch under one lock, and a waiting thread is
    signalled only when one is actually waiting.
    """

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self.maxsize = maxsize
        self._items: deque[T | _Stop] = deque()
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._getters = 0  # threads waiting in _readable / _writable
        self._putters = 0
        self._stopping = threading.Event()  # set by put_stop: a lingering consumer stops waiting
        metrics.QUEUE_CAPACITY.labels(name).set(maxsize)
        metrics.QUEUE_DEPTH.labels(name).set_function(self.qsize)

    def put(self, item: T, timeout: float | None = 5.0) -> bool:
        """Put, waiting up to `timeout` seconds (None: forever). False = dropped."""
        with self._lock:
            if self._full() and not self._wait_for_room(timeout):
                metrics.DROPPED.labels(self.name, "queue_full").inc()
                return False
            self._items.append(item)
            if self._getters:
                self._readable.notify()
        return True

    def put_many(self, items: Sequence[T], timeout: float | None = 5.0) -> int:
        """Put every item in order, waiting up to `timeout` seconds in all for room (None:
        forever); returns how many were put, the rest are dropped and counted."""
        put = 0
        with self._lock:
            if self.maxsize <= 0 or len(self._items) + len(items) <= self.maxsize:
                self._items.extend(items)
                put = len(items)
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                for item in items:
                    if self._full():
                        if self._getters:
                            self._readable.notify()  # what is queued can go while we wait
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        if not self._wait_for_room(left):
                            break
                    self._items.append(item)
                    put += 1
            if put and self._getters:
                self._readable.notify()
        if put < len(items):
            metrics.DROPPED.labels(self.name, "queue_full").inc(len(items) - put)
        return put

    def put_stop(self) -> None:
        """Queue the stop sentinel (never refused: a stop must not wait for room)."""
        with self._lock:
            self._items.append(STOP)
            self._readable.notify_all()
        self._stopping.set()

    def get(self, timeout: float | None = None) -> T | _Stop:
        """The next item; `queue.Empty` when none came within `timeout` (None: forever)."""
        with self._lock:
            if not self._wait_for_items(timeout):
                raise queue.Empty
            item = self._items.popleft()
            if self._putters:
                self._writable.notify()
            return item

    def get_batch(
        self, max_items: int, max_wait: float | None, linger: float = 0.0
    ) -> tuple[list[T], bool]:
        """Up to `max_items` items, waiting at most `max_wait` (None: until one comes)
        for the first one.

        With `linger`, a batch that is not full after the first drain waits that long
        (without being woken by each put) for more: a trickle of events then makes one
        batch per `linger` instead of one per event — one commit, one wake-up — while a
        flood still fills batches back to back. `put_stop` cuts the wait short.
        Returns the items and whether the stop sentinel was reached.
        """
        items: list[T] = []
        with self._lock:
            if not self._wait_for_items(max_wait):
                return items, False
            if self._drain(items, max_items):
                return items, True
        if linger > 0 and len(items) < max_items:
            self._stopping.wait(linger)  # returns at once after put_stop
            with self._lock:
                return items, self._drain(items, max_items)
        return items, False

    def qsize(self) -> int:
        return len(self._items)

    # --- with the lock held ---------------------------------------------------------
    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def _wait_for_room(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._full():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._putters += 1
            try:
                self._writable.wait(left)
            finally:
                self._putters -= 1
        return True

    def _wait_for_items(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._items:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._getters += 1
            try:
                self._readable.wait(left)
            finally:
                self._getters -= 1
        return True

    def _drain(self, items: list[T], max_items: int) -> bool:
        """Move what is queued now into `items`, up to `max_items`; True at the stop."""
        q = self._items
        stopped = False
        while q and len(items) < max_items:
            item = q.popleft()
            if isinstance(item, _Stop):
                stopped = True
                break
            items.append(item)
        if self._putters:
            self._writable.notify_all()
        return stopped


Stage = Callable[[Event], Event | None]
"""A stage takes an event and returns it enriched (a new frozen copy), or None to drop it
deliberately (never used to lose data: only for events a stage decides are noise)."""

Sink = Callable[[Event], None]
BatchSink = Callable[[Sequence[Event]], None]


def batch_form(sink: Sink) -> BatchSink | None:
    """The batch entry point of a sink that has one: a sink that is an object's `submit`
    method (the store writer's, the correlator's) is given whole batches through the same
    object's `submit_many`, when it defines one."""
    if getattr(sink, "__name__", None) != "submit":
        return None
    many = getattr(getattr(sink, "__self__", None), "submit_many", None)
    return many if callable(many) else None


@dataclass
class StageSpec:
    name: str
    fn: Stage
    # run in the thread of the stage before, on each batch it passes on, instead of in a
    # thread of its own behind a queue: for a stage that never waits (policy)
    shares_thread: bool = False


def thread_groups(stages: Sequence[StageSpec]) -> list[list[StageSpec]]:
    """The stages each pipeline thread runs, in order."""
    groups: list[list[StageSpec]] = []
    for spec in stages:
        if spec.shares_thread and groups:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


class Pipeline:
    """sensors → [queue → stage]* → sinks, each stage in one joined thread."""

    def __init__(
        self,
        stages: Sequence[StageSpec],
        sinks: Sequence[Sink],
        queue_size: int = 50_000,
        put_timeout: float = 5.0,
        linger: float = LINGER,
    ) -> None:
        self._put_timeout = put_timeout
        self._linger = linger
        # queue i feeds the thread of stage group i (named after its first stage), and the
        # last group's thread delivers to the sinks itself (a thread of its own would cost
        # one more wake-up per event); without stages a "dispatch" thread does the delivering
        self._groups = thread_groups(stages)
        names = [g[0].name for g in self._groups] or ["dispatch"]
        self._queues: list[BoundedQueue[Event]] = [BoundedQueue(n, queue_size) for n in names]
        self._stages = list(stages)
        self._sinks = list(sinks)
        self._batch_sinks = [batch_form(sink) for sink in self._sinks]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def input(self) -> BoundedQueue[Event]:
        return self._queues[0]

    def emit(self, event: Event) -> bool:
        """Give an event to the pipeline; False means it was dropped (and counted)."""
        return self._queues[0].put(event, timeout=self._put_timeout)

    def start(self) -> None:
        # a stage loop that fails is restarted in its thread after a back-off; it stops
        # only at the sentinel, so the supervisor's stop event is never set
        never = threading.Event()
        for i, group in enumerate(self._groups):
            name = "stage-" + "+".join(spec.name for spec in group)
            beat = HEARTBEATS.add(name, self._queues[i].qsize)
            target = supervised(partial(self._run_stage, i, beat), beat, never)
            t = threading.Thread(target=target, name=name)
            t.start()
            self._threads.append(t)
        if not self._stages:
            beat = HEARTBEATS.add("stage-dispatch", self._queues[0].qsize)
            target = supervised(partial(self._run_dispatch, beat), beat, never)
            t = threading.Thread(target=target, name="stage-dispatch")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Process everything queued, then join every stage thread."""
        self._queues[0].put_stop()
        for t in self._threads:
            t.join()
        HEARTBEATS.remove(*(t.name for t in self._threads))
        self._threads.clear()

    def _run_stage(self, index: int, beat: Heartbeat) -> None:
        inbox = self._queues[index]
        outbox = self._queues[index + 1] if index + 1 < len(self._queues) else None
        # each stage's metric children, looked up once rather than twice per event
        steps = [
            (spec, metrics.STAGE_IN.labels(spec.name), metrics.STAGE_OUT.labels(spec.name))
            for spec in self._groups[index]
        ]
        # the first stage lingers, so a trickle (a flow every few ms) moves through the
        # stages in small bursts: one wake-up of each stage thread per burst, not per event
        linger = self._linger if index == 0 else 0.0
        while True:
            items, stopped = inbox.get_batch(STAGE_BATCH, None, linger=linger)
            beat.beat()
            beat.busy = True
            results = items
            for spec, taken, passed in steps:
                taken.inc(len(results))
                if results:
                    results = [r for r in self._apply(spec, results, beat) if r is not None]
                passed.inc(len(results))
            if results:
                if outbox is None:
                    self._deliver_many(results)
                else:
                    # inside the pipeline we wait: back-pressure reaches the sensors' put
                    outbox.put_many(results, timeout=None)
            beat.busy = False
            if stopped:
                if outbox is not None:
                    outbox.put_stop()
                return

    @staticmethod
    def _apply(spec: StageSpec, items: list[Event], beat: Heartbeat) -> list[Event | None]:
        """The stage on a batch: its `batch(items, beat)` when it has one (e.g. classify
        hands the whole batch to its pool at once), else one call per event; a failure
        passes the event on unchanged, never loses it."""
        batch = getattr(spec.fn, "batch", None)
        if batch is not None and items:
            try:
                results: list[Event | None] = batch(items, beat.beat)
                if len(results) == len(items):
                    return results
                log.error("stage %s returned %d of %d events", spec.name, len(results), len(items))
            except Exception:
                log.exception("stage %s failed on a batch; judging it event by event", spec.name)
            metrics.STAGE_ERRORS.labels(spec.name).inc()
        out: list[Event | None] = []
        for item in items:
            try:
                out.append(spec.fn(item))
            except Exception:  # a stage bug must not lose the event
                log.exception("stage %s failed on %s; passing it on unchanged", spec.name, item.uid)
                metrics.STAGE_ERRORS.labels(spec.name).inc()
                out.append(item)
            beat.beat()
        return out

    def _run_dispatch(self, beat: Heartbeat) -> None:
        inbox = self._queues[0]
        while True:
            item = inbox.get()
            beat.beat()
            if isinstance(item, _Stop):
                return
            self._deliver(item)

    def _deliver(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("sink %r failed on %s", sink, event.uid)
                metrics.STAGE_ERRORS.labels("sink").inc()

    def _deliver_many(self, events: list[Event]) -> None:
        """A stage's whole batch to each sink: in one call where the sink takes batches
        (one queue lock and at most one wake-up of its thread per batch), else event by
        event."""
        for sink, many in zip(self._sinks, self._batch_sinks, strict=True):
            if many is None:
                for event in events:
                    try:
                        sink(event)
                    except Exception:
                        log.exception("sink %r failed on %s", sink, event.uid)
                        metrics.STAGE_ERRORS.labels("sink").inc()
                continue
            try:
                many(events)
            except Exception:
                log.exception("sink %r failed on a batch of %d", sink, len(events))
                metrics.STAGE_ERRORS.labels("sink").inc()
