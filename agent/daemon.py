"""Wiring and lifecycle of `egress-agent run`.

Start order: store (migrate, register host) → writer → pipeline stages → sensors →
metrics endpoint → scheduler → READY=1. Stop order is the reverse for producers first:
sensors stop (flushing what they saw), the pipeline drains, the writer commits
everything queued, and only then does the process exit 0. SIGHUP reloads the config
and policy; what cannot change live is logged as needing a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import metrics, sensors, status_file
from agent.backoff import Backoff
from agent.config import ConfigError, Settings, load_settings
from agent.events import Event
from agent.liveness import HEARTBEATS, name_all_threads
from agent.pipeline import Pipeline, Sink, StageSpec
from agent.runtime import Runtime
from agent.sdnotify import Notifier
from agent.sensors import Sensor, SensorUnavailable
from agent.store.db import (
    host_identity,
    is_central,
    make_engine,
    register_host,
    schema_is_current,
    upgrade,
)
from agent.store.watch import StoreWatch
from agent.store.writer import StoreWriter

if TYPE_CHECKING:
    from agent.store.forwarder import Forwarder

log = logging.getLogger(__name__)

STATUS_EVERY = 10.0  # seconds between status.json rewrites (`status` calls it stale past 30)


def build_stages(rt: Runtime) -> list[StageSpec]:
    """The pipeline's stages, in order: classify, then policy.

    Each capability adds its stage here with one line; a stage is a callable
    `Event -> Event` built from the runtime. The policy holder is attached first: the
    classifier reads its categories, and the policy stage and the correlator (a sink,
    built next) judge with it.
    """
    stages: list[StageSpec] = []
    from agent.policy import PolicyStage, attach_policy

    holder = attach_policy(rt)  # rt.policy(); reloads on SIGHUP and on pack file changes
    from agent.classify.stage import ClassifyStage

    stages.append(StageSpec("classify", ClassifyStage(rt, categories=holder.categories)))
    approved = rt.settings.network.approved_git_remotes
    # policy never waits (about 20 us an event): it runs in the classify stage's thread on
    # each batch that stage passes on, one queue hand-over and thread wake-up less a batch
    stages.append(StageSpec("policy", PolicyStage(holder, approved), shares_thread=True))
    return stages


def build_sinks(rt: Runtime, writer: StoreWriter) -> list[Sink]:
    """Where judged events go: the store writer first, then correlation."""
    sinks: list[Sink] = [writer.submit]
    from agent.incidents import Correlator

    correlator = Correlator(
        rt.engine,
        rt.host_id,
        rt.hostname,
        rt.settings.incidents,
        policy=rt.policy(),
        read_watch=rt.read_watch,
        anchor_dir=rt.settings.state_dir,
    )
    correlator.start()
    sinks.append(correlator.submit)
    rt.on_stop(correlator.stop)
    return sinks


def start_metrics_server(settings: Settings) -> Any:
    from agent.metrics_server import serve

    return serve(settings.metrics)


class Agent:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # a signal or request_stop cuts the main loop's wait
        self.sensors: list[Sensor] = []
        self.sensor_errors: dict[str, str] = {}
        self._metrics_server: Any = None
        self._scheduler: Any = None
        self.started_at = time.time()
        self._broken: dict[str, str] = {}
        self._sensor_backoff: dict[str, Backoff] = {}
        self._sensor_retry_at: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        name_all_threads()  # every thread started below shows its name in top -H and ps -L
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(s.database_url)
        host_id, hostname = host_identity(s.state_dir, s.agent.host_id, s.agent.hostname)
        self.forwarder: Forwarder | None = None
        if is_central(s.database_url):
            from agent.store.fleet_link import open_forwarder  # psycopg: the fleet store only

            # fleet store: the writer commits to a local spool and never waits on the
            # network; the forwarder upgrades, registers the host and sends the spool on
            self.forwarder = open_forwarder(s, host_id, hostname)
            if not self.forwarder.start(wait=min(s.database.forward_timeout, 10.0)):
                log.warning(
                    "central store not reachable yet (%s); spooling to %s",
                    self.forwarder.last_error,
                    self.forwarder.spool.path,
                )
        else:
            if s.database.auto_upgrade and not schema_is_current(self.engine):
                upgrade(self.engine)  # imports Alembic: only when there is a migration to run
            register_host(self.engine, host_id, hostname)
        watch = None
        if self.forwarder is None:
            watch = StoreWatch.for_engine(
                self.engine, host_id, hostname, auto_upgrade=s.database.auto_upgrade
            )
        self.runtime = Runtime(s, self.engine, host_id, hostname, store_watch=watch)
        if self.forwarder is not None:
            fwd = self.forwarder
            self.runtime.on_status(lambda: {"fleet": fwd.status()})
        self.writer = StoreWriter(
            self.engine,
            host_id,
            batch_size=s.database.batch_size,
            flush_interval=s.database.flush_interval,
            queue_size=s.database.queue_size,
            commit=self.forwarder.commit if self.forwarder is not None else None,
            watch=watch,
        )
        self.writer.start()
        self.pipeline = Pipeline(
            build_stages(self.runtime),
            build_sinks(self.runtime, self.writer),
            queue_size=s.database.queue_size,
        )
        self.pipeline.start()
        if s.metrics.enabled:
            self._metrics_server = start_metrics_server(s)
            log.info("metrics on http://%s/metrics", s.metrics.listen)
        self._start_sensors()
        self._start_scheduler()
        self.write_status()
        self.notifier.ready(f"watching; {len(self.sensors)} sensor(s) up")
        log.info(
            "egress-agent running (host %s, store %s)", hostname, self.engine.url.render_as_string()
        )

    def _start_sensors(self) -> None:
        for name in self.settings.sensors.enabled:
            try:
                factory = sensors.load(name)
                sensor = factory(self.runtime)
                sensor.start(self._emit)
            except SensorUnavailable as e:
                self.sensor_errors[name] = str(e)
                metrics.SENSOR_UP.labels(name).set(0)
                log.warning("sensor %s not started: %s", name, e)
                continue
            except Exception as e:  # a broken sensor must not stop the others
                self.sensor_errors[name] = f"{type(e).__name__}: {e}"
                metrics.SENSOR_UP.labels(name).set(0)
                log.exception("sensor %s failed to start", name)
                continue
            self.sensors.append(sensor)
            metrics.SENSOR_UP.labels(name).set(1)

    def _start_scheduler(self) -> None:
        from agent import jobs

        self._scheduler = jobs.start(self.runtime)

    def _emit(self, event: Event) -> bool:
        return self.pipeline.emit(event)

    def stop(self) -> None:
        """Stop whatever was started, in order; safe after a partial start."""
        self.notifier.stopping()
        log.info("stopping: flushing queued events")
        for sensor in self.sensors:
            try:
                sensor.stop()
            except Exception:
                log.exception("sensor %s failed to stop cleanly", sensor.name)
            metrics.SENSOR_UP.labels(sensor.name).set(0)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        if hasattr(self, "pipeline"):
            self.pipeline.stop()
        if hasattr(self, "runtime"):
            self.runtime.run_stop_hooks()
        if hasattr(self, "writer"):
            self.writer.stop()
        forwarder = getattr(self, "forwarder", None)
        if forwarder is not None:
            forwarder.close()  # bounded: what is not forwarded stays spooled
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if hasattr(self, "writer"):
            self.write_status(stopped=True)
            log.info("stopped: %d events written", self.writer.written)
        if hasattr(self, "engine"):
            self.engine.dispose()

    # --- main loop -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def serve(self) -> None:
        """Wake for a signal, or every `ping` seconds (systemd's watchdog half-period, else
        `agent.watchdog_interval`) and at most every STATUS_EVERY: a quiet agent's main
        thread costs a wake-up every few seconds, not one a second."""
        ping = self.notifier.watchdog_interval() or self.settings.agent.watchdog_interval
        last_status = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(ping, STATUS_EVERY))
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.check_health():
                self.notifier.watchdog()  # fed only while the pipeline keeps up
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if time.monotonic() - last_status >= STATUS_EVERY - 0.5:
                self.write_status()
                last_status = time.monotonic()

    def check_health(self) -> bool:
        """Set `sensor_up` and the pipeline gauge from heartbeats; restart dead sensors.

        True when every stage and the store writer is healthy: only then is the systemd
        watchdog fed, so a hung pipeline gets the agent restarted.
        """
        stall = self.settings.agent.stall_after
        broken = HEARTBEATS.unhealthy(stall, "stage-")
        broken.update(HEARTBEATS.unhealthy(stall, "store-writer"))
        healthy = not broken
        metrics.PIPELINE_HEALTHY.set(1 if healthy else 0)
        if broken != self._broken:
            for name, why in broken.items():
                if name not in self._broken:
                    log.error("%s is not healthy: %s", name, why)
            if not broken:
                log.info("pipeline healthy again")
            self._broken = broken
        for i, sensor in enumerate(list(self.sensors)):
            beat = HEARTBEATS.get(f"sensor-{sensor.name}")
            alive = beat is None or beat.healthy(stall)
            metrics.SENSOR_UP.labels(sensor.name).set(1 if alive and healthy else 0)
            if beat is not None and beat.thread is not None and not beat.thread.is_alive():
                self._restart_sensor(i, sensor)
        return healthy

    def _restart_sensor(self, index: int, sensor: Sensor) -> None:
        """A sensor whose thread is gone is stopped and built again, after a back-off."""
        delays = self._sensor_backoff.setdefault(sensor.name, Backoff(1.0, 300.0))
        due = self._sensor_retry_at.get(sensor.name)
        now = time.monotonic()
        if due is None:
            wait = delays.next()
            self._sensor_retry_at[sensor.name] = now + wait
            log.error("sensor %s stopped running; restarting it in %.1f s", sensor.name, wait)
            return
        if now < due:
            return
        del self._sensor_retry_at[sensor.name]
        try:
            sensor.stop()
        except Exception:
            log.exception("sensor %s failed to stop before its restart", sensor.name)
        try:
            fresh = sensors.load(sensor.name)(self.runtime)
            fresh.start(self._emit)
        except Exception as e:
            self.sensor_errors[sensor.name] = f"restart failed: {type(e).__name__}: {e}"
            log.exception("sensor %s could not be restarted", sensor.name)
            self.sensors.pop(index)
            return
        self.sensors[index] = fresh
        metrics.SENSOR_RESTARTS.labels(sensor.name).inc()
        log.warning("sensor %s restarted", sensor.name)

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings(self.config_path)
        except ConfigError as e:
            log.error("config reload failed; keeping the running config: %s", e)
        else:
            from agent import logs

            logs.setup(new.agent.log_level, new.agent.log_format)
            changed = [
                k
                for k in type(new).model_fields
                if getattr(new, k) != getattr(self.settings, k) and k not in ("agent", "policies")
            ]
            if changed:
                log.warning("config sections changed that need a restart: %s", ", ".join(changed))
            self.settings = new
            self.runtime.settings = new
        self.runtime.run_reload_hooks()
        self.notifier.ready("reloaded")

    # --- status for `egress-agent status` --------------------------------------
    def write_status(self, stopped: bool = False) -> None:
        doc = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "running": not stopped,
            "host_id": self.runtime.host_id,
            "hostname": self.runtime.hostname,
            "metrics": self.settings.metrics.listen if self.settings.metrics.enabled else None,
            "sensors": status_file.sensors_status(self.sensors, self.settings.agent.stall_after),
            "sensor_errors": self.sensor_errors,
            "written": self.writer.written,
            "queues": {"store": self.writer.queue.qsize(), "pipeline": self.pipeline.input.qsize()},
            "threads": status_file.thread_table(),
        }
        doc.update(self.runtime.status())
        status_file.write(self.settings.state_dir, doc)


def run(settings: Settings, config_path: Path | None = None) -> int:
    agent = Agent(settings, config_path)
    agent.install_signal_handlers()
    try:
        agent.start()
    except BaseException:
        agent.stop()
        raise
    try:
        agent.serve()
    finally:
        agent.stop()
    return 0
