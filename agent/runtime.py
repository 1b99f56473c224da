"""What stages, sensors and jobs may use of the running agent, typed.

The daemon (agent/daemon.py, the composition root) builds one `Runtime` at start and
hands it to each stage, sink, sensor factory and job builder. This module sits below
all of them: it imports no stage, sensor or job at run time, so a leaf module can name
its type without importing the daemon.

Start order is in the types. The daemon attaches the policy holder before it builds the
stages; `policy()` raises `NotAttached` when a caller comes earlier, naming who was
missing, instead of handing out a None. What may legitimately be absent is typed as
optional: the SQLite store's watch (none on a fleet store) and the file sensor (off, or
not started). The file sensor's read marks are reached through `read_watch`, the one
feedback edge (agent/feedback.py).

The lifecycle is three lists of hooks, each run in the order registered: `on_stop`
(after the pipeline drained, before the store writer stops), `on_reload` (SIGHUP, after
the config was read again) and `on_status` (each hook's mapping is merged into
status.json). A failing hook is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from agent.config import Settings
from agent.feedback import ReadWatch

if TYPE_CHECKING:
    from agent.policy.holder import PolicyHolder
    from agent.sensors.files.sensor import FileSensor
    from agent.store.watch import StoreWatch

log = logging.getLogger(__name__)

Hook = Callable[[], object]
StatusHook = Callable[[], Mapping[str, Any]]
Job = Callable[[], object]
JobSpec = tuple[str, float, Job]  # (name, interval in seconds, what to run)
# what each job builder gives the scheduler: its spec, or None when off in config
JobBuilder = Callable[["Runtime"], "JobSpec | None"]


class NotAttached(RuntimeError):
    """A collaborator was used before the code that provides it attached it (a wiring bug)."""


@dataclass(eq=False)
class Runtime:
    """The running agent as its parts see it: settings, store, collaborators, hooks."""

    settings: Settings
    engine: Engine
    host_id: str
    hostname: str
    # the SQLite store's file watch (the maintenance job's integrity check); None on a
    # fleet store, whose local spool the forwarder owns
    store_watch: StoreWatch | None = None
    read_watch: ReadWatch = field(default_factory=ReadWatch)
    _policy: PolicyHolder | None = field(default=None, repr=False)
    _files_sensor: FileSensor | None = field(default=None, repr=False)
    _stop_hooks: list[Hook] = field(default_factory=list, repr=False)
    _reload_hooks: list[Hook] = field(default_factory=list, repr=False)
    _status_hooks: list[StatusHook] = field(default_factory=list, repr=False)

    # --- collaborators ---------------------------------------------------------------
    def attach_policy(self, holder: PolicyHolder) -> None:
        """The policy holder in force (agent/policy/holder.py `attach_policy`)."""
        if self._policy is not None:
            raise RuntimeError("a policy holder is already attached to this runtime")
        self._policy = holder

    def policy(self) -> PolicyHolder:
        """The policy holder; raises `NotAttached` before `attach_policy`."""
        if self._policy is None:
            raise NotAttached(
                "the policy holder is used before attach_policy ran: "
                "build the stages (which attach it) before the sinks and sensors"
            )
        return self._policy

    def attach_files_sensor(self, sensor: FileSensor) -> None:
        """The running file sensor (again after a restart) and its read marks."""
        self._files_sensor = sensor
        self.read_watch.attach(sensor.watch_reads)

    @property
    def files_sensor(self) -> FileSensor | None:
        """The file sensor, None when it is not enabled or could not be created."""
        return self._files_sensor

    # --- lifecycle -------------------------------------------------------------------
    def on_stop(self, hook: Hook) -> None:
        self._stop_hooks.append(hook)

    def on_reload(self, hook: Hook) -> None:
        self._reload_hooks.append(hook)

    def on_status(self, hook: StatusHook) -> None:
        self._status_hooks.append(hook)

    def run_stop_hooks(self) -> None:
        _run_each(self._stop_hooks, "stop")

    def run_reload_hooks(self) -> None:
        _run_each(self._reload_hooks, "reload")

    def status(self) -> dict[str, Any]:
        """Every status hook's mapping merged, in order (a later key wins)."""
        doc: dict[str, Any] = {}
        for hook in self._status_hooks:
            try:
                doc.update(hook())
            except Exception:
                log.exception("status hook failed")
        return doc


def _run_each(hooks: list[Hook], what: str) -> None:
    for hook in list(hooks):
        try:
            hook()
        except Exception:
            log.exception("%s hook failed", what)
