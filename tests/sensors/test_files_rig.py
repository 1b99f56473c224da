"""Shared rig for the file sensor tests (imported by the other test_files_* modules): a
collecting `emit`, a SQLite store, and sensors started under tmp_path and always stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from agent.config import FilesSection
from agent.events import FileAction, FileEvent
from agent.sensors.files import FileSensor
from agent.store.writer import write_batch
from tests.conftest import eventually

HOST = "test-host"


class Collector:
    """The sensor's `emit`: keeps every event; can refuse the first N (a full pipeline)."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.events: list[FileEvent] = []
        self.refused: list[FileEvent] = []
        self.refuse_first = refuse_first
        self._lock = threading.Lock()

    def __call__(self, ev: Any) -> bool:
        with self._lock:
            if len(self.refused) < self.refuse_first:
                self.refused.append(ev)
                return False
            self.events.append(ev)
        return True

    def snapshot(self) -> list[FileEvent]:
        with self._lock:
            return list(self.events)

    def of(self, action: FileAction) -> list[FileEvent]:
        return [e for e in self.snapshot() if e.action == action]

    def written_paths(self) -> list[str]:
        return [e.path for e in self.of(FileAction.WRITTEN)]

    def wait(self, pred: Callable[[list[FileEvent]], bool], timeout: float = 15.0) -> bool:
        return eventually(lambda: pred(self.snapshot()), timeout, interval=0.05)

    def store(self, engine: Engine) -> None:
        """Commit what was collected, as the store writer would."""
        write_batch(engine, HOST, self.snapshot())


@pytest.fixture
def start_sensor() -> Iterator[Callable[..., tuple[FileSensor, Collector]]]:
    started: list[FileSensor] = []

    def start(
        engine: Engine | None = None,
        collector: Collector | None = None,
        rescan_on_start: bool = False,
        scratch_dir: str | None = None,
        **files: Any,
    ) -> tuple[FileSensor, Collector]:
        files.setdefault("exclude", ["**/*.swp"])
        files.setdefault("fanotify", "off")
        files.setdefault("follow_mounts", False)
        sensor = FileSensor(
            FilesSection(**files),
            engine,
            HOST,
            rescan_on_start=rescan_on_start,
            scratch_dir=scratch_dir,
        )
        col = collector or Collector()
        sensor.start(col)
        started.append(sensor)
        return sensor, col

    yield start
    for s in started:
        s.stop()
