# ruff: noqa: F811 (pytest fixtures come from the shared rig module)
"""Process attribution (fanotify) and runs with fewer privileges: the writer's pid on
`written`, `read` events for paths of interest only, `status` saying why attribution
is off, and directories the agent may not read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.events import FileAction
from tests.conftest import REPO, is_root
from tests.sensors.test_files_rig import start_sensor  # noqa: F401

needs_root = pytest.mark.skipif(not is_root(), reason="fanotify needs CAP_SYS_ADMIN")
needs_capsh = pytest.mark.skipif(
    not (is_root() and shutil.which("capsh")), reason="needs root and capsh to drop capabilities"
)


@needs_root
def test_writer_process_is_attached_to_written(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    sensor, col = start_sensor(roots=[root], fanotify="on")
    assert sensor.status()["process_attribution"] == "fanotify"
    script = "import time; open('%s', 'w').write('x' * 10); time.sleep(0.5)" % (root / "w.txt")
    proc = subprocess.Popen([sys.executable, "-c", script])
    assert col.wait(lambda evs: any(e.action == "written" for e in evs))
    proc.wait()
    (ev,) = col.of(FileAction.WRITTEN)
    assert ev.process is not None
    assert ev.process.pid == proc.pid
    assert ev.process.exe == os.path.realpath(sys.executable)
    assert ev.process.uid == 0 and ev.process.user == "root"
    assert "w.txt" in (ev.process.cmdline or "")


@needs_root
def test_creator_mover_and_deleter_are_attached(tmp_path, start_sensor):
    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    _sensor, col = start_sensor(roots=[root, other], fanotify="on")
    script = (
        "import os, sys, time\n"
        "a, b, c = sys.argv[1:]\n"
        "open(a, 'w').close()\n"
        "os.rename(a, b)\n"
        "os.rename(b, c)\n"
        "os.unlink(c)\n"
        "time.sleep(0.5)\n"
    )
    a, b, c = root / "a", root / "b", other / "c"
    proc = subprocess.Popen([sys.executable, "-c", script, str(a), str(b), str(c)])
    assert col.wait(lambda evs: any(e.action == "deleted" for e in evs))
    proc.wait()
    got = {(str(e.action), e.path, e.dest_path): e.process for e in col.snapshot()}
    assert set(got) == {
        ("created", str(a), None),
        ("written", str(a), None),
        ("moved", str(a), str(b)),
        ("moved", str(b), str(c)),
        ("deleted", str(c), None),
    }
    for what, p in got.items():
        assert p is not None and p.pid == proc.pid, what


@needs_root
def test_reads_are_reported_only_for_paths_of_interest(tmp_path, start_sensor):
    root = tmp_path / "root"
    root.mkdir()
    tagged, plain = root / "weights.safetensors", root / "notes.txt"
    tagged.write_bytes(b"w" * 100)
    plain.write_text("plain")
    sensor, col = start_sensor(roots=[root], fanotify="auto")
    assert sensor.watch_reads(str(tagged))
    assert str(tagged) in sensor.interesting_paths
    script = "import sys, time\nfor p in sys.argv[1:]: open(p, 'rb').read()\ntime.sleep(0.5)\n"
    proc = subprocess.Popen([sys.executable, "-c", script, str(plain), str(tagged)])
    assert col.wait(lambda evs: any(e.action == "read" for e in evs))
    proc.wait()
    col.wait(lambda evs: False, timeout=0.5)
    (read,) = col.of(FileAction.READ)
    assert read.path == str(tagged) and read.size == 100
    assert read.process is not None and read.process.pid == proc.pid
    assert read.process.exe == os.path.realpath(sys.executable)
    # an atomic save replaces the inode: the new file is still of interest
    tmp = root / "weights.tmp"
    tmp.write_bytes(b"v" * 50)
    os.replace(tmp, tagged)
    assert col.wait(lambda evs: any(e.action == "moved" for e in evs))
    proc = subprocess.Popen([sys.executable, "-c", script, str(tagged)])
    assert col.wait(lambda evs: len([e for e in evs if e.action == "read"]) == 2)
    proc.wait()
    sensor.unwatch_reads(str(tagged))
    assert not sensor.interesting_paths


HELPER = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    from agent.config import FilesSection
    from agent.sensors import SensorUnavailable
    from agent.sensors.files import FileSensor
    root, mode = sys.argv[1], sys.argv[2]
    events = []
    s = FileSensor(FilesSection(roots=[root], fanotify=mode, follow_mounts=False), None)
    try:
        s.start(lambda e: events.append(e) or True)
    except SensorUnavailable as e:
        print(json.dumps({{"unavailable": str(e)}}))
        sys.exit(0)
    open(os.path.join(root, "open", "new.txt"), "w").write("x")
    time.sleep(0.5)
    s.stop()
    print(json.dumps({{"status": s.status(), "written": [e.path for e in events
                       if e.action == "written"]}}))
    """
)


def _run_without(tmp_path: Path, caps: str, root: Path, mode: str = "auto") -> dict:
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER.format(repo=str(REPO)))
    cmd = f"{sys.executable} {helper} {root} {mode}"
    res = subprocess.run(
        ["capsh", f"--drop={caps}", "--", "-c", cmd], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_capsh
def test_without_cap_sys_admin_status_says_why(tmp_path):
    root = tmp_path / "root"
    (root / "open").mkdir(parents=True)
    out = _run_without(tmp_path, "cap_sys_admin", root)
    assert "needs CAP_SYS_ADMIN" in out["status"]["process_attribution"]
    assert out["written"] == [str(root / "open" / "new.txt")]
    out = _run_without(tmp_path, "cap_sys_admin", root, mode="on")
    assert out == {"unavailable": "files.fanotify is 'on' but fanotify needs CAP_SYS_ADMIN"}


@needs_capsh
def test_permission_denied_directories_are_skipped(tmp_path):
    root = tmp_path / "root"
    (root / "open").mkdir(parents=True)
    locked = root / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "secret.txt").write_text("s")
    locked.chmod(0)
    try:
        out = _run_without(tmp_path, "cap_dac_override,cap_dac_read_search", root)
    finally:
        locked.chmod(0o755)
    assert out["status"]["denied_dirs"] >= 1
    assert out["written"] == [str(root / "open" / "new.txt")]
