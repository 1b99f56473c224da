"""The typed runtime: hooks run in the order registered and survive a failing one;
collaborators used before their producer attached them fail with a clear error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.config import FilesSection, Settings
from agent.daemon import build_sinks
from agent.runtime import NotAttached, Runtime
from agent.sensors.files.sensor import FileSensor
from agent.store.writer import StoreWriter


@pytest.fixture
def rt(engine: Engine, tmp_path: Path) -> Runtime:
    return Runtime(Settings(agent={"state_dir": str(tmp_path)}), engine, "host-1", "host")


def test_hooks_run_in_registration_order_past_a_failing_one(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise OSError("disk gone")

    rt.on_stop(lambda: calls.append("policy"))
    rt.on_stop(broken)
    rt.on_stop(lambda: calls.append("correlator"))
    rt.on_reload(lambda: calls.append("reload"))
    with caplog.at_level(logging.ERROR, logger="agent.runtime"):
        rt.run_stop_hooks()
    assert calls == ["policy", "broken", "correlator"]  # reload hooks are not stop hooks
    assert "stop hook failed" in caplog.text and "disk gone" in caplog.text
    calls.clear()
    rt.run_reload_hooks()
    assert calls == ["reload"]


def test_status_merges_hooks_in_order_and_skips_a_failing_one(rt: Runtime) -> None:
    rt.on_status(lambda: {"policy": {"version": "a"}, "cache": 1})
    rt.on_status(lambda: {}["missing"])  # a KeyError: logged, the others still report
    rt.on_status(lambda: {"cache": 2})
    assert rt.status() == {"policy": {"version": "a"}, "cache": 2}


def test_policy_before_attach_names_the_missing_step(rt: Runtime) -> None:
    with pytest.raises(NotAttached, match="before attach_policy ran"):
        rt.policy()


def test_sinks_built_before_the_stages_fail_at_once(rt: Runtime, engine: Engine) -> None:
    """The correlator judges with the policy holder the stages attach: building the sinks
    first is a wiring bug that must show at start, not as an agent that never alerts."""
    writer = StoreWriter(engine, rt.host_id)
    with pytest.raises(NotAttached):
        build_sinks(rt, writer)


def test_a_second_policy_holder_is_refused(rt: Runtime) -> None:
    from agent.policy import PolicyHolder

    rt.attach_policy(PolicyHolder(lambda: rt.settings.policies))
    with pytest.raises(RuntimeError, match="already attached"):
        rt.attach_policy(PolicyHolder(lambda: rt.settings.policies))


def test_file_sensor_attaches_its_read_marks(rt: Runtime, tmp_path: Path) -> None:
    """Incidents' requests reach the sensor attached last (a restart replaces it)."""
    assert rt.files_sensor is None and not rt.read_watch.attached
    rt.read_watch.ask("/data/early.bin")  # no sensor yet: nothing to do, not an error
    files = FilesSection(roots=[str(tmp_path)], fanotify="off", follow_mounts=False)
    first, second = FileSensor(files), FileSensor(files)
    rt.attach_files_sensor(first)
    rt.read_watch.ask("/data/model.safetensors")
    rt.attach_files_sensor(second)
    rt.read_watch.ask("/data/early.bin")
    assert rt.files_sensor is second
    assert first.interesting_paths == {"/data/model.safetensors"}
    assert second.interesting_paths == {"/data/early.bin"}
