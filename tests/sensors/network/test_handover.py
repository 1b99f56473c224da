"""The live sensor hands flow records to the pipeline in batches (sensor.FLOW_LINGER):
records that end close together are emitted together, exact, in the order the table
exported them, and a stop hands over whatever is still held."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.events import Event
from agent.sensors.network import sensor as sensor_module
from tests.sensors.network.rig import Rig
from tests.sensors.network.test_rig import _start_sink, _upload

pytestmark = [pytest.mark.netns]


def test_flows_ending_close_together_are_handed_over_together(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in()
    emitted_at: dict[int, float] = {}
    emit = sensor._emit

    def timed(ev: Event) -> bool:
        emitted_at[ev.src_port] = time.monotonic()  # type: ignore[attr-defined]
        return bool(emit(ev))

    sensor._emit = timed
    sink = _start_sink(rig)
    sizes = {}
    for i in range(3):  # ~0.1 s apart: one hand-over holds them all
        sizes[_upload(rig, rig.peer_v4, sink.port, 1000 + i)] = 1000 + i
        time.sleep(0.1)
    flows = out.wait_for(lambda fs: {f.src_port for f in fs} >= set(sizes))
    assert {f.src_port: f.bytes_out for f in flows if f.src_port in sizes} == sizes
    times = [emitted_at[p] for p in sizes]
    assert max(times) - min(times) < 0.1 < sensor_module.FLOW_LINGER
    assert sensor.emitted == len(flows)


def test_stop_hands_over_held_flows(rig: Rig, sensor_in: Any) -> None:
    sensor, out = sensor_in()
    sink = _start_sink(rig)
    port = _upload(rig, rig.peer_v4, sink.port, 4321)
    time.sleep(0.2)  # the destroy notification is read, the record held
    sensor.stop()
    assert [(f.src_port, f.bytes_out) for f in out.flows if f.src_port == port] == [(port, 4321)]
