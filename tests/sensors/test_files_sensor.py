# ruff: noqa: F811 (pytest fixtures come from the shared rig module)
"""The file sensor on real inotify and real directories: bursts, new-directory races,
moves, odd names, deep trees, symlink loops, lost events and their repair."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from agent import metrics
from agent.events import FileAction, FileEvent, Origin
from tests.conftest import wait_until
from tests.sensors.test_files_rig import Collector, start_sensor  # noqa: F401


def _sample(metric: object, **labels: str) -> float:
    from prometheus_client import REGISTRY

    name = metric._name  # type: ignore[attr-defined]
    for fam in REGISTRY.collect():
        for s in fam.samples:
            if s.name in (name, name + "_total") and all(
                s.labels.get(k) == v for k, v in labels.items()
            ):
                return float(s.value)
    return 0.0


def _burst(root: Path, dirs: int, per_dir: int) -> list[str]:
    paths = []
    for d in range(dirs):
        sub = root / f"dir{d:02d}"
        sub.mkdir()
        for i in range(per_dir):
            p = sub / f"f{i:05d}.bin"
            with open(p, "wb") as f:
                f.write(b"x" * (i % 97))
            paths.append(str(p))
    return paths


def test_burst_in_new_directories_yields_one_written_per_file(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    _sensor, col = start_sensor(roots=[root])
    paths = _burst(root, dirs=20, per_dir=100)
    assert col.wait(lambda evs: len({e.path for e in evs if e.action == "written"}) >= 2000)
    col.wait(lambda evs: False, timeout=1.0)  # anything late would be a duplicate
    written = Counter(col.written_paths())
    assert set(written) == set(paths)
    assert max(written.values()) == 1, [p for p, n in written.items() if n > 1][:5]
    sizes = {e.path: e.size for e in col.of(FileAction.WRITTEN)}
    assert all(sizes[p] == int(p[-9:-4]) % 97 for p in paths)  # the final size, never partial
    assert all(e.origin == Origin.WATCH for e in col.of(FileAction.WRITTEN))


def test_many_writes_then_one_close_is_one_written(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    _sensor, col = start_sensor(roots=[root])
    with open(root / "big.bin", "wb") as f:
        for _ in range(200):
            f.write(b"y" * 4096)
            f.flush()
    assert col.wait(lambda evs: any(e.action == "written" for e in evs))
    col.wait(lambda evs: False, timeout=0.5)
    (ev,) = col.of(FileAction.WRITTEN)
    assert ev.size == 200 * 4096 and ev.inode == os.stat(root / "big.bin").st_ino
    assert [e.action for e in col.snapshot()] == [FileAction.CREATED, FileAction.WRITTEN]


def test_moves_within_across_into_and_out_of_roots(tmp_path, start_sensor, engine):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for d in (a, b, out):
        d.mkdir()
    (a / "d").mkdir()
    for i in range(3):
        (a / "d" / f"m{i}").write_text("m")
    (out / "dd").mkdir()
    for i in range(4):
        (out / "dd" / f"n{i}").write_text("n")
    (out / "h").write_text("h")
    (a / "f").write_text("f")
    _sensor, col = start_sensor(engine=engine, roots=[a, b])

    os.rename(a / "f", a / "g")  # within a root
    os.rename(a / "g", b / "g")  # across roots
    os.rename(out / "h", a / "h")  # into a root
    os.rename(a / "h", out / "h2")  # out of the roots
    os.rename(a / "d", b / "d")  # a directory across roots
    os.rename(out / "dd", a / "dd")  # a directory into a root
    assert col.wait(lambda evs: sum(e.path.startswith(str(a / "dd")) for e in evs) >= 4)
    (b / "d" / "late").write_text("late")  # the moved directory is watched at its new path
    (a / "dd" / "late").write_text("late")  # the directory moved in is watched
    assert col.wait(lambda evs: sum(e.path.endswith("/late") for e in evs) >= 4)
    col.store(engine)  # the store knows the files before their directory leaves
    os.rename(a / "dd", out / "dd2")  # a directory out of the roots
    assert col.wait(lambda evs: sum(e.action == "moved" and e.dest_path is None for e in evs) >= 6)

    moves = {(e.path, e.dest_path) for e in col.of(FileAction.MOVED)}
    assert (str(a / "f"), str(a / "g")) in moves
    assert (str(a / "g"), str(b / "g")) in moves
    assert (str(a / "h"), None) in moves
    assert {(str(a / "d" / f"m{i}"), str(b / "d" / f"m{i}")) for i in range(3)} <= moves
    names = ["late", *(f"n{i}" for i in range(4))]
    assert {(str(a / "dd" / n), None) for n in names} <= moves
    written = set(col.written_paths())
    assert str(a / "h") in written  # moved in: a complete file arrived
    assert {str(a / "dd" / f"n{i}") for i in range(4)} <= written
    assert {str(b / "d" / "late"), str(a / "dd" / "late")} <= written
    assert not any(str(out) in (e.dest_path or "") for e in col.snapshot())


def test_odd_names(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    _sensor, col = start_sensor(roots=[root])
    broot = os.fsencode(root)
    names = [b"\xff\xfe latin-1 \xe9.bin", b"new\nline.txt", b"a" * 255, "中文 名字.txt".encode()]
    for n in names:
        with open(broot + b"/" + n, "wb") as f:
            f.write(b"data")
    sub = broot + b"/\xc3\x28dir"
    os.mkdir(sub)
    with open(sub + b"/" + b"b" * 255, "wb") as f:
        f.write(b"data")
    expected = {broot + b"/" + n for n in names} | {sub + b"/" + b"b" * 255}
    assert col.wait(
        lambda evs: {os.fsencode(e.path) for e in evs if e.action == "written"} >= expected
    )
    for e in col.of(FileAction.WRITTEN):
        assert isinstance(e.path, str) and os.path.exists(os.fsencode(e.path))


def test_deep_tree_created_at_once(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    _sensor, col = start_sensor(roots=[root])
    deep = root.joinpath(*[f"l{i}" for i in range(80)])
    deep.mkdir(parents=True)
    leaves = []
    for depth in (10, 40, 80):
        p = root.joinpath(*[f"l{i}" for i in range(depth)], "leaf.txt")
        p.write_text("x")
        leaves.append(str(p))
    assert col.wait(lambda evs: set(leaves) <= {e.path for e in evs if e.action == "written"})


def test_symlink_loops_are_not_followed(tmp_path, start_sensor):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    os.symlink(root, root / "loop")
    os.symlink("../..", root / "a" / "b" / "up")
    os.symlink(root / "a", root / "a" / "b" / "self")
    sensor, col = start_sensor(roots=[root])
    assert sensor.status()["watches"] == 3
    os.symlink("loop", root / "newlink")
    (root / "a" / "b" / "f.txt").write_text("x")
    assert col.wait(
        lambda evs: str(root / "a/b/f.txt") in {e.path for e in evs if e.action == "written"}
    )
    (created,) = [e for e in col.of(FileAction.CREATED) if e.path.endswith("newlink")]
    assert created.path == str(root / "newlink")


def test_excluded_paths_are_neither_watched_nor_reported(tmp_path, start_sensor):
    root = tmp_path / "root"
    (root / ".git" / "objects").mkdir(parents=True)
    sensor, col = start_sensor(roots=[root], exclude=["**/.git/objects/**", "*.swp"])
    watches = sensor.status()["watches"]
    (root / ".git" / "objects" / "ab").mkdir()
    (root / ".git" / "objects" / "ab" / "cd").write_text("blob")
    (root / "x.swp").write_text("swap")
    (root / "keep.txt").write_text("keep")
    assert col.wait(lambda evs: any(e.path.endswith("keep.txt") for e in evs))
    col.wait(lambda evs: False, timeout=0.3)
    assert {e.path for e in col.snapshot()} == {str(root / "keep.txt")}
    assert sensor.status()["watches"] == watches


def test_overflow_is_counted_and_repaired_by_a_rescan(tmp_path, start_sensor, engine):
    root = tmp_path / "root"
    root.mkdir()
    sensor, col = start_sensor(engine=engine, roots=[root])
    lost_before = _sample(metrics.FILE_LOST, reason="queue_overflow")
    rescans_before = _sample(metrics.FILE_RESCANS, reason="queue_overflow")
    (root / "before.txt").write_text("seen live")
    assert col.wait(lambda evs: any(e.path.endswith("before.txt") for e in evs))

    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    sensor.pause_reader()
    # each file in the watched root costs IN_CREATE + IN_CLOSE_WRITE: more than the queue
    paths = []
    for i in range(limit // 2 + 500):
        p = root / f"o{i:05d}"
        p.write_bytes(b"o")
        paths.append(str(p))
    paths += _burst(root, dirs=4, per_dir=50)  # directories no watch saw being made
    sensor.resume_reader()

    assert col.wait(lambda evs: set(paths) <= {e.path for e in evs if e.action == "written"}, 60)
    assert _sample(metrics.FILE_LOST, reason="queue_overflow") == lost_before + 1
    # the rescan counts itself once it has sent its last step, after the events above
    wait_until(
        lambda: _sample(metrics.FILE_RESCANS, reason="queue_overflow") >= rescans_before + 1,
        "the overflow rescan counted",
        timeout=30,
    )
    found = [e for e in col.of(FileAction.WRITTEN) if e.origin == Origin.RESCAN]
    assert found, "the rescan found nothing: the overflow was not repaired"
    assert sensor.status()["lost"] == {"queue_overflow": 1}
    # what was seen live before the overflow is not reported again
    assert [e.path for e in col.snapshot()].count(str(root / "before.txt")) == 2  # created, written
    # new directories made during the overflow are watched after the rescan
    (root / "dir03" / "after.txt").write_text("x")
    assert col.wait(lambda evs: any(e.path.endswith("after.txt") for e in evs))


def test_refused_events_mark_the_root_dirty_and_are_repaired(tmp_path, start_sensor, engine):
    root = tmp_path / "root"
    root.mkdir()
    col = Collector(refuse_first=5)
    _sensor, col = start_sensor(engine=engine, collector=col, roots=[root])
    for i in range(5):
        (root / f"r{i}").write_text("r")
    assert col.wait(
        lambda evs: (
            {str(root / f"r{i}") for i in range(5)}
            <= {e.path for e in evs if e.action == "written"}
        )
    )
    assert len(col.refused) == 5
    refused_writes = {e.path for e in col.refused if e.action == "written"}
    assert refused_writes
    repaired = {e.path for e in col.of(FileAction.WRITTEN) if e.origin == Origin.RESCAN}
    assert refused_writes == repaired


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_startup_rescan_reconciles_with_the_store(tmp_path, start_sensor, request, store):
    if store == "sqlite":
        engine = request.getfixturevalue("engine")
    else:
        from agent.store.db import make_engine, upgrade

        engine = make_engine(request.getfixturevalue("pg_url"))
        upgrade(engine)
        request.addfinalizer(engine.dispose)
    root = tmp_path / "ro%ot_[x]\\y"  # LIKE wildcards and a backslash in the prefix
    root.mkdir()
    odd = os.fsdecode(os.fsencode(root) + b"/odd\xff.bin")
    for name in ("same", "changed", "gone"):
        (root / name).write_text(name)
    with open(odd, "w") as f:
        f.write("odd")

    def seen(path: str) -> FileEvent:
        st = os.lstat(path)
        return FileEvent(
            FileAction.WRITTEN, path, size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns
        )

    # a sibling an unescaped LIKE 'ro%ot_...' would take for part of the root
    sibling = tmp_path / "roXYZot_[x]\\y"
    sibling.mkdir()
    (sibling / "other").write_text("not under the root")
    known = Collector()
    for p in (root / "same", root / "changed", root / "gone", sibling / "other"):
        known(seen(str(p)))
    known(seen(odd))
    known.store(engine)
    (root / "changed").write_text("changed, longer")
    (root / "gone").unlink()
    (sibling / "other").unlink()  # gone, but not the root's business
    (root / "new").write_text("new")

    _sensor, col = start_sensor(engine=engine, rescan_on_start=True, roots=[root])
    assert col.wait(lambda evs: len(evs) >= 3)
    col.wait(lambda evs: False, timeout=0.5)
    got = {(str(e.action), e.path, str(e.origin)) for e in col.snapshot()}
    assert got == {
        ("written", str(root / "changed"), "rescan"),
        ("written", str(root / "new"), "rescan"),
        ("deleted", str(root / "gone"), "rescan"),
    }


def test_stop_joins_every_thread_and_flushes_pending_moves(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    sensor, col = start_sensor(roots=[root])
    (root / "x").write_text("x")
    assert col.wait(lambda evs: any(e.action == "written" for e in evs))
    sensor.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("files-")]
    assert sensor.status()["emitted"] == len(col.snapshot())


def test_inventory_job_reconciles_every_root(tmp_path, engine):
    from agent.config import Settings
    from agent.jobs import JOB_BUILDERS
    from agent.runtime import Runtime
    from agent.sensors.files import create, inventory_rescan_job

    root = tmp_path / "root"
    root.mkdir()
    (root / "existing.txt").write_text("before the agent")
    settings = Settings(
        agent={"state_dir": str(tmp_path / "state")},
        files={"roots": [str(root)], "fanotify": "off", "follow_mounts": False},
        jobs={"rescan_interval": 3600},
    )
    rt = Runtime(settings, engine, "test-host", "test")
    assert inventory_rescan_job in JOB_BUILDERS
    assert inventory_rescan_job(rt) is None  # no file sensor running: no job
    sensor = create(rt)
    assert rt.files_sensor is sensor
    col = Collector()
    sensor.rescan_on_start = False
    sensor.start(col)
    try:
        name, interval, run = inventory_rescan_job(rt)
        assert (name, interval) == ("files_rescan", 3600)
        before = _sample(metrics.FILE_RESCANS, reason="inventory")
        run()
        assert _sample(metrics.FILE_RESCANS, reason="inventory") == before + 1
        (ev,) = col.snapshot()
        assert (ev.action, ev.path, ev.origin) == ("written", str(root / "existing.txt"), "rescan")
        assert _sample(metrics.FILE_RESCAN_FOUND, type="written") >= 1
        run()  # just done: the next run waits for its interval
        assert _sample(metrics.FILE_RESCANS, reason="inventory") == before + 1
    finally:
        sensor.stop()


def test_metrics_count_events_by_type_and_channel(tmp_path, start_sensor):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    before = _sample(metrics.FILE_EVENTS, type="written", channel="local")
    sensor_before = _sample(metrics.SENSOR_EVENTS, sensor="files")
    _sensor, col = start_sensor(roots=[root])
    for i in range(7):
        (root / "a" / f"m{i}").write_text("m")
    assert col.wait(lambda evs: len([e for e in evs if e.action == "written"]) == 7)
    assert _sample(metrics.FILE_EVENTS, type="written", channel="local") == before + 7
    assert _sample(metrics.SENSOR_EVENTS, sensor="files") == sensor_before + len(col.snapshot())
    assert col.wait(lambda evs: _sample(metrics.FILE_WATCHES) == 2, timeout=2)


def test_rescan_survives_a_store_failure_and_retries(tmp_path, start_sensor):
    from agent.store.db import make_engine, upgrade

    root = tmp_path / "root"
    root.mkdir()
    (root / "there.txt").write_text("already there")
    broken = make_engine(f"sqlite:///{tmp_path / 'not-yet-migrated.db'}")  # no tables yet
    sensor, col = start_sensor(engine=broken, rescan_on_start=True, roots=[root])
    assert col.wait(lambda evs: sensor.status()["dirty"] == [str(root)], timeout=5)
    assert not col.snapshot()
    upgrade(broken)  # the store is back
    assert col.wait(lambda evs: [e.path for e in evs] == [str(root / "there.txt")], timeout=10)
    assert col.snapshot()[0].origin == Origin.RESCAN
    (root / "live.txt").write_text("the watch never stopped")
    assert col.wait(lambda evs: any(e.path.endswith("live.txt") for e in evs))
    broken.dispose()


def test_a_root_deleted_and_made_again_is_watched_again(tmp_path, start_sensor, engine):
    import shutil

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    sensor, col = start_sensor(engine=engine, roots=[root])
    sensor.rescans.check_interval = 0.3
    (root / "sub" / "a.txt").write_text("a")
    assert col.wait(lambda evs: any(e.action == "written" for e in evs))
    shutil.rmtree(root)
    assert col.wait(lambda evs: any(e.action == "deleted" for e in evs))
    root.mkdir()
    (root / "b.txt").write_text("made while the root was not watched")
    assert col.wait(
        lambda evs: any(e.path == str(root / "b.txt") and e.origin == "rescan" for e in evs)
    )
    assert _sample(metrics.FILE_RESCANS, reason="root_lost") >= 1
    (root / "c.txt").write_text("live again")
    assert col.wait(
        lambda evs: any(e.path == str(root / "c.txt") and e.origin == "watch" for e in evs)
    )


def test_channels_on_events(tmp_path, start_sensor):
    root = tmp_path / "root"
    for d in ("Nutstore/proj", "百度网盘", "plain", "synced"):
        (root / d).mkdir(parents=True)
    share = tmp_path / "share"  # shown to the sensor as an NFS mount
    share.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_bytes(
        b"1 0 254:0 / / rw - ext4 /dev/vda rw\n"
        + f"2 1 0:99 / {share} rw - nfs4 srv:/export rw\n".encode()
    )
    from agent.config import FilesSection
    from agent.sensors.files import FileSensor

    col = Collector()
    sensor = FileSensor(
        FilesSection(
            roots=[root], cloud_sync=[root / "synced"], fanotify="off", follow_mounts=True
        ),
        None,
        rescan_on_start=False,
        mountinfo=str(mountinfo),
    )
    sensor.start(col)
    try:
        assert sensor.roots.get(str(share)) == "mount"  # a network share is followed
        files = {
            root / "Nutstore" / "proj" / "a.py": "cloud_sync",
            root / "百度网盘" / "b.bin": "cloud_sync",
            root / "synced" / "c.txt": "cloud_sync",
            root / "plain" / "d.txt": "local",
            share / "e.txt": "network_share",
        }
        for p in files:
            p.write_text("x")
        # onto the share: one rename (the "share" is really on the same file system)
        os.rename(root / "plain" / "d.txt", share / "moved.txt")
        assert col.wait(lambda evs: len([e for e in evs if e.action == "written"]) == 5)
        assert col.wait(lambda evs: any(e.action == "moved" for e in evs))
        got = {e.path: str(e.channel) for e in col.of(FileAction.WRITTEN)}
        assert got == {str(p): ch for p, ch in files.items()}
        (move,) = col.of(FileAction.MOVED)
        assert move.dest_path == str(share / "moved.txt") and move.channel == "network_share"
    finally:
        sensor.stop()


def test_a_big_tree_moved_in_is_reported_once_per_file(tmp_path, start_sensor, monkeypatch):
    from agent.sensors.files import tree

    monkeypatch.setattr(tree, "MAX_DEFERRED", 10)  # memory bound on files awaiting a close
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "big" / "sub").mkdir(parents=True)
    want = set()
    for i in range(60):
        p = outside / "big" / ("sub" if i % 2 else "") / f"f{i}"
        p.write_text("x")
        want.add(str(root / p.relative_to(outside)))
    _sensor, col = start_sensor(roots=[root])
    os.rename(outside / "big", root / "big")
    assert col.wait(lambda evs: set(col.written_paths()) == want)
    col.wait(lambda evs: False, timeout=0.7)
    assert sorted(col.written_paths()) == sorted(want)


def test_own_state_directory_is_not_watched_and_holds_no_rescan_leftovers(
    tmp_path, start_sensor, engine
):
    """A root above the state directory (say /var) must not see the agent's own store
    writes, or each stored event would come back as another file event."""
    root = tmp_path / "root"
    state = root / "state"
    state.mkdir(parents=True)
    (state / "rescan-killed.db").write_bytes(b"left by an agent killed mid-rescan")
    sensor, col = start_sensor(engine=engine, roots=[root], scratch_dir=str(state))
    (state / "agent.db-wal").write_bytes(b"store pages")
    (root / "user.txt").write_text("work")
    assert col.wait(lambda evs: any(e.path.endswith("user.txt") for e in evs))
    assert sensor.reconcile(str(root), "inventory") >= 0
    assert not [e for e in col.snapshot() if e.path.startswith(str(state))]
    # the comparison file is gone, and so is the one a killed agent left
    assert sorted(p.name for p in state.iterdir()) == ["agent.db-wal"]
