"""An exhausted inotify watch limit: counted, logged once, and repaired by rescans.

The limit is lowered only inside a fresh user namespace (`unshare --user
--map-root-user`, then /proc/sys/user/max_inotify_watches), so nothing else on the
host is affected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

HELPER = textwrap.dedent(
    """
    import json, logging, os, sys, time
    sys.path.insert(0, {repo!r})
    logging.basicConfig(level=logging.WARNING)
    from agent import metrics
    from agent.config import FilesSection
    from agent.sensors.files import FileSensor
    from agent.store.db import make_engine, upgrade
    root, db = sys.argv[1], sys.argv[2]
    engine = make_engine("sqlite:///" + db)
    upgrade(engine)
    events = []
    s = FileSensor(FilesSection(roots=[root], fanotify="off", follow_mounts=False), engine, "h")
    s.start(lambda e: events.append(e) or True)
    time.sleep(1.0)  # the start-up rescan
    started = len(events)
    open(os.path.join(root, "d19", "late.txt"), "w").write("unwatched")
    time.sleep(0.5)
    # what the kernel reported (a start-up rescan still running on a loaded machine may
    # find the file too: that is a rescan's finding, not a live event)
    live = [e.path for e in events[started:] if e.origin != "rescan"]
    s.rescan_all("test")
    status = s.status()
    s.stop()
    print(json.dumps({{
        "status": status,
        "live": live,
        "rescan": [[e.action, e.path, e.origin] for e in events[started:]
                   if e.origin == "rescan"],
        "lost_metric": metrics.FILE_LOST.labels("watch_limit")._value.get(),
    }}))
    """
)


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_watch_limit_is_counted_and_repaired_by_rescan(tmp_path):
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"user namespaces unavailable: {probe.stderr.strip()}")
    root = tmp_path / "root"
    for i in range(20):
        (root / f"d{i:02d}").mkdir(parents=True)
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER.format(repo=str(REPO)))
    cmd = (
        "echo 8 > /proc/sys/user/max_inotify_watches && "
        f"exec {sys.executable} {helper} {root} {tmp_path / 'store.db'}"
    )
    res = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    status = out["status"]
    assert status["watches"] == 8
    assert status["unwatched_dirs"] == 21 - 8
    assert status["lost"]["watch_limit"] == 13  # once per directory, not per attempt
    assert out["lost_metric"] == 13
    assert res.stderr.count("events lost (watch_limit") == 1  # logged once
    late = str(root / "d19" / "late.txt")
    assert late not in out["live"]  # no watch there: the kernel could not tell us
    assert ["written", late, "rescan"] in out["rescan"]  # the rescan found it
