"""A load generator: N synthetic file events, for drills and benchmarks.

Off unless `sensors.enabled` names it and `sensors.synthetic_count` > 0. Its events are
marked `origin=synthetic` so they can never be mistaken for real observations.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from agent import metrics
from agent.events import Channel, FileAction, FileEvent, Origin
from agent.sensors import Emit

if TYPE_CHECKING:
    from agent.runtime import Runtime


class SyntheticSensor:
    name = "synthetic"

    def __init__(self, count: int, rate: float = 0.0) -> None:
        self.count = count
        self.rate = rate
        self.emitted = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, emit: Emit) -> None:
        self._thread = threading.Thread(target=self._run, args=(emit,), name="sensor-synthetic")
        self._thread.start()

    def _run(self, emit: Emit) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        for i in range(self.count):
            if self._stop.is_set():
                return
            ev = FileEvent(
                action=FileAction.WRITTEN,
                path=f"/synthetic/{i // 1000:04d}/file-{i:08d}.bin",
                channel=Channel.LOCAL,
                size=i,
                origin=Origin.SYNTHETIC,
                sensor=self.name,
            )
            if emit(ev):
                self.emitted += 1
                metrics.SENSOR_EVENTS.labels(self.name).inc()
            else:
                self.dropped += 1
            if interval:
                time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def status(self) -> dict[str, object]:
        return {"emitted": self.emitted, "dropped": self.dropped, "target": self.count}


def create(rt: Runtime) -> SyntheticSensor:
    s = rt.settings.sensors
    return SyntheticSensor(s.synthetic_count, s.synthetic_rate)
