"""`egress-agent run` as a real subprocess: metrics, sd_notify, clean stop with nothing lost."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.conftest import cli, store_rows, synthetic_into, wait_until, write_config


def test_sigterm_with_10000_queued_events_loses_none(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    # The backlog at SIGTERM is made certain, not likely: the test holds the store's write
    # lock from before the sensor has finished until after SIGTERM, so the writer (one row
    # per commit) waits in its busy timeout while every later event stays queued.
    db = tmp_path / "queued.db"
    synthetic_into(agent_config, db, 10_000, 2_000, batch_size=1)
    agent = run_agent(agent_config)
    agent.wait_metrics()
    wait_until(lambda: bool(store_rows(db, "SELECT 1 FROM file_events LIMIT 1")))
    lock = sqlite3.connect(db, timeout=30, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        emitted = agent.metric("egress_agent_sensor_events_total", {"sensor": "synthetic"})
        assert (emitted or 0) < 10_000, "the lock must be held before the sensor finishes"
        wait_until(
            lambda: (
                agent.metric("egress_agent_sensor_events_total", {"sensor": "synthetic"}) == 10_000
            )
        )
        text = agent.scrape()  # one scrape: the depths are read at one instant
        queued = agent.metric("egress_agent_queue_depth", {"queue": "store"}, text=text) or 0
        queued += agent.metric("egress_agent_queue_depth", {"queue": "dispatch"}, text=text) or 0
        assert queued > 0
        agent.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the stop begins with the writer still locked out
    finally:
        lock.rollback()
        lock.close()
    assert agent.stop() == 0, agent.stderr()
    assert store_rows(db, "SELECT count(*) FROM file_events") == [(10_000,)]
    doc = json.loads(cli("status", "--json", config=agent.config_path).stdout)
    assert doc["counts"]["file_events"] == 10_000
    assert doc["daemon"]["running"] is False


def test_metrics_endpoint_and_build_info(agent_config: dict[str, Any], run_agent: Any) -> None:
    agent = run_agent(agent_config)
    text = agent.wait_metrics()
    assert "egress_agent_build_info{" in text
    for name in (
        "egress_agent_store_write_seconds",
        "egress_agent_events_dropped_total",
        "egress_agent_queue_depth",
        "egress_agent_store_last_write_timestamp_seconds",
    ):
        assert name in text
    assert agent.stop(signal.SIGINT) == 0


def test_sd_notify_ready_watchdog_stopping(
    agent_config: dict[str, Any], run_agent: Any, tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    agent = run_agent(
        agent_config, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    )
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("READY=1" in m for m in seen):
        seen.append(sock.recv(4096).decode())
    assert any("READY=1" in m for m in seen), seen
    # WATCHDOG_USEC=0.4 s: pings every 0.2 s
    pings = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pings < 3:
        if "WATCHDOG=1" in sock.recv(4096).decode():
            pings += 1
    assert pings >= 3
    agent.proc.send_signal(signal.SIGTERM)
    msgs = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("STOPPING=1" in m for m in msgs):
        msgs.append(sock.recv(4096).decode())
    assert any("STOPPING=1" in m for m in msgs)
    assert agent.stop() == 0
    sock.close()


def test_failing_sensor_is_isolated(agent_config: dict[str, Any], run_agent: Any) -> None:
    agent_config["sensors"] = {"enabled": ["no-such-sensor", "synthetic"], "synthetic_count": 5}
    agent = run_agent(agent_config)
    agent.wait_metrics()
    assert agent.metric("egress_agent_sensor_up", {"sensor": "no-such-sensor"}) == 0
    assert agent.metric("egress_agent_sensor_up", {"sensor": "synthetic"}) == 1
    status = json.loads(cli("status", "--json", config=agent.config_path).stdout)
    assert "no-such-sensor" in status["daemon"]["sensor_errors"]
    assert agent.stop() == 0


def test_sighup_reload_keeps_running_and_rejects_bad_config(
    agent_config: dict[str, Any], run_agent: Any
) -> None:
    agent = run_agent(agent_config)
    agent.wait_metrics()
    write_config(agent.config_path, {**agent_config, "bogus": 1})
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in agent.stderr(), timeout=15)
    assert agent.proc.poll() is None
    agent.scrape()
    assert agent.stop() == 0


def test_store_error_is_one_line(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "a.yaml",
        {
            "agent": {"state_dir": str(tmp_path / "s")},
            "database": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
        },
    )
    res = cli("events", "list", config=cfg, check=False)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "store" in res.stderr


def test_db_upgrade_and_events_list_json(
    agent_config: dict[str, Any], tmp_path: Path, run_agent: Any
) -> None:
    agent_config["sensors"] = {"enabled": ["synthetic"], "synthetic_count": 3}
    cfg = write_config(tmp_path / "c.yaml", agent_config)
    assert "revision" in cli("db", "upgrade", config=cfg).stdout
    agent = run_agent(agent_config)
    agent.wait_metrics()
    wait_until(
        lambda: agent.metric("egress_agent_store_rows_written_total", {"table": "file_events"}) == 3
    )
    assert agent.stop() == 0
    lines = cli("events", "list", "--json", "--kind", "written", config=agent.config_path)
    docs = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(docs) == 3
    for d in docs:
        assert {"time", "kind", "type", "path", "channel", "tags"} <= set(d)
        assert d["kind"] == "file" and d["type"] == "written"
