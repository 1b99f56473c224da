# ruff: noqa: F811 (pytest fixtures come from the shared rig module)
"""Following the mount table: a tmpfs mounted under a configured removable path after
start is watched within seconds, reported as `removable`, and unmounted cleanly."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.events import Channel, FileAction, Origin
from tests.conftest import is_root
from tests.sensors.test_files_rig import start_sensor  # noqa: F401

pytestmark = pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")


def _wait(pred, timeout: float = 10.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def _umount(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["umount", str(path)], capture_output=True, text=True)


def test_tmpfs_mounted_under_removable_path_after_start(tmp_path, start_sensor, engine):
    media = tmp_path / "media"
    usb = media / "usb"
    usb.mkdir(parents=True)
    sensor, col = start_sensor(
        engine=engine, removable=[media], follow_mounts=True, mount_poll_interval=0.5
    )
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "egress-test", str(usb)], check=True)
    try:
        took = _wait(lambda: str(usb) in sensor.roots)
        assert took is not None and took < 3.0, "the new mount was not followed within 3 s"
        (usb / "model.safetensors").write_bytes(b"w" * 1000)
        (usb / "sub").mkdir()
        (usb / "sub" / "data.csv").write_text("a,b\n")
        want = {str(usb / "model.safetensors"), str(usb / "sub" / "data.csv")}
        assert col.wait(lambda evs: want <= {e.path for e in evs if e.action == "written"})
        for e in col.of(FileAction.WRITTEN):
            assert e.channel == Channel.REMOVABLE
        col.store(engine)
    finally:
        res = _umount(usb)
    assert res.returncode == 0, f"unmount blocked (the sensor holds the mount?): {res.stderr}"
    assert _wait(lambda: str(usb) not in sensor.roots) is not None
    # media and the (again visible) usb directory
    assert _wait(lambda: sensor.status()["watches"] == 2) is not None
    # the medium left; its files were not deleted — not even by the next inventory rescan
    sensor.rescan_all("inventory")
    assert not col.of(FileAction.DELETED)
    (usb / "after.txt").write_text("on the mount point directory itself")
    assert col.wait(lambda evs: any(e.path.endswith("after.txt") for e in evs))


def test_files_already_on_a_new_medium_are_reported_once(tmp_path, start_sensor, engine):
    staging = tmp_path / "staging"
    staging.mkdir()
    media = tmp_path / "media"
    stick = media / "stick"
    stick.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "egress-stage", str(staging)], check=True)
    try:
        for i in range(20):
            (staging / f"doc{i}.txt").write_text("x" * i)
        sensor, col = start_sensor(
            engine=engine, removable=[media], follow_mounts=True, mount_poll_interval=0.5
        )
        subprocess.run(["mount", "--bind", str(staging), str(stick)], check=True)
        try:
            want = {str(stick / f"doc{i}.txt") for i in range(20)}
            assert col.wait(lambda evs: want <= {e.path for e in evs if e.action == "written"})
            assert all(e.origin == Origin.RESCAN for e in col.snapshot())
            assert all(e.channel == Channel.REMOVABLE for e in col.snapshot())
            col.store(engine)
        finally:
            assert _umount(stick).returncode == 0
        assert _wait(lambda: str(stick) not in sensor.roots) is not None
        n = len(col.snapshot())
        subprocess.run(["mount", "--bind", str(staging), str(stick)], check=True)
        try:
            assert _wait(lambda: str(stick) in sensor.roots) is not None
            sensor.reconcile(str(stick), "test")  # what the store knows is not reported again
            assert len(col.snapshot()) == n
        finally:
            assert _umount(stick).returncode == 0
    finally:
        _umount(stick)
        _umount(staging)
    assert os.path.isdir(stick)
