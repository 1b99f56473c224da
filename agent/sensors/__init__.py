"""Sensors and the one registry they are listed in.

A sensor watches one source (files, network, ...) and hands typed events to `emit`.
It has a tiny interface — `start(emit)`, `stop()`, `status()` — so the daemon can run
any set of them and a failing one shows as `egress_agent_sensor_up{sensor} 0` while the
others go on. To add a sensor: write a module with a class implementing `Sensor`, and
add one line to `_REGISTRY` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from agent.errors import AgentError
from agent.events import Event

if TYPE_CHECKING:
    from agent.runtime import Runtime

Emit = Callable[[Event], bool]


class SensorUnavailable(AgentError):
    """The sensor cannot run here (missing privilege, kernel feature...): a reason, not a crash."""


class Sensor(Protocol):
    name: str

    def start(self, emit: Emit) -> None:
        """Begin watching; return promptly (run work in threads the sensor joins on stop)."""

    def stop(self) -> None:
        """Stop watching, flush what was seen into `emit`, join threads."""

    def status(self) -> dict[str, object]:
        """Facts for `egress-agent status` (e.g. why process attribution is off)."""


SensorFactory = Callable[["Runtime"], Sensor]
"""Builds a sensor from the runtime (settings, store engine, host id)."""

# name -> "module:factory"; imported lazily so an unused sensor costs nothing at start.
_REGISTRY: dict[str, str] = {
    "files": "agent.sensors.files:create",
    "network": "agent.sensors.network:create",
    "synthetic": "agent.sensors.synthetic:create",
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def load(name: str) -> SensorFactory:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise SensorUnavailable(f"unknown sensor {name!r}; known: {', '.join(names())}") from None
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    factory: SensorFactory = getattr(module, attr)
    return factory
