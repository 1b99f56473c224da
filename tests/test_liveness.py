"""Liveness that tells the truth (issue 17, class 7): a thread killed on purpose.

The agent runs in this process on a real watched directory (inotify), with a real
NOTIFY_SOCKET, so the test can break its threads from inside and watch what an operator
would see: `egress_agent_sensor_up`, the restart counters, the WATCHDOG pings, and a
file written after the fault still stored.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from agent.backoff import Backoff
from agent.config import Settings
from agent.daemon import Agent
from agent.liveness import HEARTBEATS, Heartbeat, supervised
from tests.conftest import wait_until


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- the pieces ---------------------------------------------------------------------
def test_backoff_grows_caps_and_spreads_a_fleet() -> None:
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.5, rng=lambda: 0.0)
    assert [b.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0
    fleet = [Backoff(1.0, 30.0).next() for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in fleet)
    assert len({round(d, 3) for d in fleet}) > 50  # not in lockstep


def test_supervised_restarts_a_failing_loop_and_counts_it() -> None:
    calls: list[int] = []
    beat = Heartbeat("test-loop")

    def body() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("boom")

    before = _value("egress_agent_thread_restarts_total", {"thread": "test-loop"})
    supervised(body, beat, threading.Event(), Backoff(0.01, 0.02))()
    assert len(calls) == 3
    assert _value("egress_agent_thread_restarts_total", {"thread": "test-loop"}) == before + 2


def test_heartbeat_idle_is_healthy_stuck_with_work_is_not() -> None:
    queued = [0]
    hb = Heartbeat("h", pending=lambda: queued[0])
    hb.last -= 100
    assert hb.healthy(stall_after=10)  # nothing to do
    queued[0] = 5
    assert not hb.healthy(stall_after=10)
    hb.beat()
    assert hb.healthy(stall_after=10)


# --- a running agent ---------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def agent(tmp_path: Path, notify_socket: socket.socket) -> Iterator[Agent]:
    root = tmp_path / "watched"
    root.mkdir()
    settings = Settings(
        agent={"state_dir": str(tmp_path / "state"), "stall_after": 1.0, "watchdog_interval": 0.2},
        metrics={"enabled": False},
        files={"roots": [str(root)], "fanotify": "off"},
        sensors={"enabled": ["files"]},
        classify={"use_magika": False},
    )
    a = Agent(settings)
    a.start()
    server = threading.Thread(target=a.serve, name="test-serve")
    server.start()
    try:
        yield a
    finally:
        a.request_stop()
        server.join()
        a.stop()


def _stored(a: Agent, name: str) -> bool:
    with a.engine.connect() as c:
        return bool(
            c.execute(
                text("SELECT 1 FROM file_events WHERE path LIKE :p"), {"p": f"%{name}"}
            ).first()
        )


def _up() -> float:
    return _value("egress_agent_sensor_up", {"sensor": "files"})


def test_reader_that_raises_is_restarted_and_sensor_up_dips(agent: Agent, tmp_path: Path) -> None:
    wait_until(lambda: _up() == 1)
    sensor = agent.sensors[0]
    tree = sensor.tree  # type: ignore[attr-defined]
    real = tree.handle
    seen: list[float] = []
    watcher_stop = threading.Event()

    def watch() -> None:
        while not watcher_stop.is_set():
            seen.append(_up())
            time.sleep(0.01)

    def broken(records: Any) -> None:
        tree.handle = real  # fails once, as a bug on one odd record would
        raise RuntimeError("injected fault in the files reader")

    watcher = threading.Thread(target=watch)
    watcher.start()
    before = _value("egress_agent_thread_restarts_total", {"thread": "sensor-files"})
    tree.handle = broken
    (tmp_path / "watched" / "trigger.txt").write_text("x")
    wait_until(
        lambda: _value("egress_agent_thread_restarts_total", {"thread": "sensor-files"}) > before
    )
    wait_until(lambda: _up() == 1 and 0.0 in seen)
    watcher_stop.set()
    watcher.join()
    (tmp_path / "watched" / "after-fault.txt").write_text("still seen")
    wait_until(lambda: _stored(agent, "after-fault.txt"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_reader_thread_turns_sensor_up_0_and_the_sensor_is_restarted(
    agent: Agent, tmp_path: Path
) -> None:
    wait_until(lambda: _up() == 1)
    old = agent.sensors[0]
    before = _value("egress_agent_sensor_restarts_total", {"sensor": "files"})

    def die(records: Any) -> None:
        raise SystemExit("the thread dies: not an Exception the supervisor restarts")

    old.tree.handle = die  # type: ignore[attr-defined]
    (tmp_path / "watched" / "kill.txt").write_text("x")
    wait_until(lambda: _up() == 0)
    wait_until(lambda: _value("egress_agent_sensor_restarts_total", {"sensor": "files"}) > before)
    assert agent.sensors[0] is not old
    wait_until(lambda: _up() == 1)
    (tmp_path / "watched" / "after-restart.txt").write_text("seen by the new sensor")
    wait_until(lambda: _stored(agent, "after-restart.txt"))


def test_stalled_stage_stops_the_watchdog_and_sensor_up(
    agent: Agent, tmp_path: Path, notify_socket: socket.socket
) -> None:
    def pings(seconds: float) -> int:
        notify_socket.setblocking(False)
        try:  # what was sent before now does not count
            while notify_socket.recv(4096):
                pass
        except BlockingIOError:
            pass
        notify_socket.settimeout(0.1)
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if notify_socket.recv(4096) == b"WATCHDOG=1":
                    n += 1
            except TimeoutError:
                pass
        return n

    assert pings(1.0) > 0
    stage = agent.pipeline._stages[-1]
    real = stage.fn
    entered, release = threading.Event(), threading.Event()

    def stuck(event: Any) -> Any:
        entered.set()
        release.wait(10)
        return real(event)

    stage.fn = stuck
    try:
        for i in range(5):
            (tmp_path / "watched" / f"queued-{i}.txt").write_text("x")
        # the stage thread is held from here on; before, a slow batch on a busy machine
        # (over a second without progress) could already have counted as a stall, and
        # the checks below would have met the healthy moment after it
        assert entered.wait(30)
        wait_until(lambda: bool(HEARTBEATS.unhealthy(1.0, "stage-")))
        wait_until(lambda: _value("egress_agent_pipeline_healthy") == 0)
        assert _up() == 0
        assert pings(1.0) == 0  # systemd would restart a hung agent
    finally:
        release.set()
        stage.fn = real
    wait_until(lambda: _value("egress_agent_pipeline_healthy") == 1)
    wait_until(lambda: _up() == 1)
    assert pings(1.0) > 0
    wait_until(lambda: _stored(agent, "queued-4.txt"))
    assert os.path.exists(tmp_path / "state")


def test_every_thread_started_after_name_all_threads_is_named_in_the_kernel() -> None:
    from agent.liveness import name_all_threads

    name_all_threads()
    name_all_threads()  # idempotent: the hook is not stacked
    seen: dict[str, str] = {}

    def look() -> None:
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm") as f:
            seen["comm"] = f.read().strip()

    t = threading.Timer(0, look)  # a Thread subclass with its own run(), as libraries use
    t.name = "ea-test-timer-long-name"
    t.start()
    t.join()
    assert seen["comm"] == "ea-test-timer-l"  # the kernel keeps 15 bytes
