"""Fixtures for the network sensor: a sensor running inside the two-namespace rig (the
rig itself is the shared `rig` fixture of tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.config import NetworkSection
from agent.events import Event, Flow
from agent.sensors.network.replay import destinations_from
from agent.sensors.network.sensor import NetworkSensor
from tests.sensors.network.rig import Rig


class Collected:
    """Flows the sensor emitted, with a wait helper."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self._cv = threading.Condition()

    def emit(self, ev: Event) -> bool:
        assert isinstance(ev, Flow)
        with self._cv:
            self.flows.append(ev)
            self._cv.notify_all()
        return True

    def wait_for(self, pred: Callable[[list[Flow]], bool], timeout: float = 15.0) -> list[Flow]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred(self.flows):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; flows so far: {self.flows}")
                self._cv.wait(left)
            return list(self.flows)

    def to(self, port: int) -> list[Flow]:
        with self._cv:
            return [f for f in self.flows if f.dst_port == port]


@pytest.fixture
def sensor_in(rig: Rig) -> Iterator[Callable[..., tuple[NetworkSensor, Collected]]]:
    """Start a NetworkSensor inside the rig's sender namespace (stopped at teardown)."""
    started: list[NetworkSensor] = []

    def start(netlink_buffer: int = 4 << 20, **overrides: Any) -> tuple[NetworkSensor, Collected]:
        overrides.setdefault("interfaces", [rig.sender_if])
        cfg = NetworkSection(**overrides)
        sensor = NetworkSensor(cfg, destinations_from(cfg), netlink_buffer=netlink_buffer)
        out = Collected()
        with rig.sender():
            sensor.start(out.emit)
        started.append(sensor)
        return sensor, out

    yield start
    for s in started:
        s.stop()
