"""The running agent's `status.json`: what `egress-agent status` shows of the daemon.

The main loop rewrites it every few seconds (`daemon.STATUS_EVERY`; `status` calls it
stale past 30 s): each sensor's heartbeat and own status, and each thread's kernel id
and CPU time. The pieces here read only heartbeats, sensors and /proc, never the
daemon's state, so they are kept apart from its wiring and lifecycle.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from agent.liveness import HEARTBEATS
from agent.sensors import Sensor

log = logging.getLogger(__name__)


def sensors_status(sensors: Iterable[Sensor], stall_after: float) -> dict[str, object]:
    """Per sensor: whether its heartbeat is fresh, and what its `status()` says."""
    return {s.name: {"up": _beating(s.name, stall_after), **_safe_status(s)} for s in sensors}


def thread_table() -> list[dict[str, object]]:
    """Each live thread's name, kernel thread id and CPU seconds so far: Python 3.11 does
    not name its threads for the kernel, so this is what maps `/proc/<pid>/task/<tid>`
    (top -H, perf, the network benchmark's per-thread breakdown) to our thread names."""
    tick = os.sysconf("SC_CLK_TCK")
    table: list[dict[str, object]] = []
    for t in threading.enumerate():
        cpu = None
        try:
            with open(f"/proc/self/task/{t.native_id}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            cpu = round((int(fields[11]) + int(fields[12])) / tick, 2)  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
        table.append({"name": t.name, "tid": t.native_id, "cpu_seconds": cpu})
    return table


def write(state_dir: Path, doc: dict[str, object]) -> None:
    """Replace `state_dir/status.json` whole (a reader never sees half of it)."""
    path = state_dir / "status.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(doc, default=str, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("cannot write %s: %s", path, e)


def _beating(name: str, stall_after: float) -> bool:
    beat = HEARTBEATS.get(f"sensor-{name}")
    return beat is None or beat.healthy(stall_after)


def _safe_status(sensor: Sensor) -> dict[str, object]:
    try:
        return dict(sensor.status())
    except Exception as e:
        return {"status_error": str(e)}
