"""Liveness that tells the truth: heartbeats, supervised threads, and what "up" means.

A thread that dies, or that stops making progress with work waiting, must not leave
`egress_agent_sensor_up` at 1 and the systemd watchdog fed — the agent would look
healthy while it sees nothing. So every long-running loop runs under `supervised()`:
an exception that escapes the loop is logged with its thread, counted in
`egress_agent_thread_restarts_total{thread}`, and the loop restarts after a jittered
back-off; while it is down its `Heartbeat` says so. Loops call `beat()` as they go
(one monotonic read, no lock). A heartbeat is *healthy* when its thread is running and
either it beat within `stall_after` seconds or it has nothing to do (not `busy` with a
batch and `pending()` is 0: an idle stage blocked on an empty queue is fine, one stuck
on a batch or with work queued is not).
The daemon reads these to set `sensor_up`, to decide whether to send `WATCHDOG=1`, and
to restart a sensor whose thread is gone.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import metrics
from agent.backoff import Backoff

log = logging.getLogger(__name__)


HEALTHY_RUN = 60.0  # seconds a restarted loop must run before its back-off starts over


def _no_work() -> int:
    return 0


@dataclass(eq=False)
class Heartbeat:
    """Progress of one loop. `beat()` is cheap enough for every iteration."""

    name: str
    pending: Callable[[], int] = _no_work
    last: float = field(default_factory=time.monotonic)
    running: bool = True
    busy: bool = False  # holding work taken off its queue (a stuck batch is not "idle")
    thread: threading.Thread | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def healthy(self, stall_after: float, now: float | None = None) -> bool:
        if not self.running:
            return False
        if self.thread is not None and not self.thread.is_alive():
            return False
        now = time.monotonic() if now is None else now
        if now - self.last <= stall_after:
            return True
        if self.busy:
            return False
        try:
            return self.pending() == 0
        except Exception:  # a broken probe is not evidence of progress
            return False

    def why_not(self, stall_after: float) -> str:
        if not self.running:
            return "restarting after an error"
        if self.thread is not None and not self.thread.is_alive():
            return "thread is not running"
        return f"no progress for {time.monotonic() - self.last:.0f} s with work queued"


class Heartbeats:
    """The registry the daemon reads; components register the loops they run."""

    def __init__(self) -> None:
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def add(self, name: str, pending: Callable[[], int] = _no_work) -> Heartbeat:
        hb = Heartbeat(name, pending)
        with self._lock:
            self._beats[name] = hb
        return hb

    def remove(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._beats.pop(name, None)

    def get(self, name: str) -> Heartbeat | None:
        return self._beats.get(name)

    def unhealthy(self, stall_after: float, prefix: str = "") -> dict[str, str]:
        """Name → reason for every registered loop (under `prefix`) that is not healthy."""
        now = time.monotonic()
        with self._lock:
            beats = [b for n, b in self._beats.items() if n.startswith(prefix)]
        return {b.name: b.why_not(stall_after) for b in beats if not b.healthy(stall_after, now)}


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the kernel too (`top -H`, `ps -L`, perf).

    Python names threads for itself only; `prctl(PR_SET_NAME)` takes 15 bytes.
    """
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the Python name still shows in status
        pass


_PR_SET_NAME = 15
_LIBC: ctypes.CDLL | None = None


def name_current_thread() -> None:
    """`name_os_thread` for the calling thread's Python name (a pool's initializer)."""
    name_os_thread(threading.current_thread().name)


def name_all_threads() -> None:
    """From now on every thread, ours or a library's (APScheduler, thread pools, timers),
    names itself in the kernel as it starts, so that no thread of the daemon shows up as
    `python` in `top -H`, `ps -L` or the idle benchmark.

    `Thread._bootstrap_inner` is where every `Thread` subclass starts, whatever its `run`;
    wrapping it once is the only hook Python offers for that.
    """
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    if getattr(original, "_names_os_thread", False):
        return

    def bootstrap(self: threading.Thread) -> None:
        name_os_thread(self.name)
        original(self)

    bootstrap._names_os_thread = True  # type: ignore[attr-defined]
    threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]


HEARTBEATS = Heartbeats()
"""The process's registry: loops register here, the daemon reads it."""


def supervised(
    body: Callable[[], None],
    heartbeat: Heartbeat,
    stop: threading.Event,
    backoff: Backoff | None = None,
) -> Callable[[], None]:
    """A thread target that runs `body` until it returns, restarting it when it raises.

    `body` returning normally means it saw the stop request and finished its work; an
    exception means a bug or a fault: logged, counted, and the loop starts again after
    a back-off (with jitter), unless a stop was requested meanwhile.
    """
    delays = backoff or Backoff(initial=0.5, maximum=30.0)

    def run() -> None:
        heartbeat.thread = threading.current_thread()
        name_os_thread(heartbeat.thread.name)
        while True:
            heartbeat.running = True
            heartbeat.beat()
            started = time.monotonic()
            try:
                body()
                return
            except Exception:
                heartbeat.running = False
                if time.monotonic() - started > HEALTHY_RUN:
                    delays.reset()  # it ran well for a while: this is a new failure
                metrics.THREAD_RESTARTS.labels(heartbeat.name).inc()
                wait = delays.next()
                log.exception(
                    "thread %s failed (%d in a row); restarting it in %.1f s",
                    heartbeat.name,
                    delays.failures,
                    wait,
                )
                if stop.wait(wait):
                    return

    return run
