"""Resident memory: 100,000 watched directories and 1,000,000 known artefacts (issue 10).

1. A tree of `--dirs` directories (100 top-level directories of equal share) under one
   root. `egress-agent run` with the file sensor watching it (SQLite store, as shipped
   otherwise) against a bare watchdog `Observer` scheduled recursively on the same tree
   (the reference). Each is measured once its inotify watches are all in place — counted
   from /proc/<pid>/fdinfo, the kernel's own list — and its RSS has settled: VmRSS and
   VmHWM from /proc/<pid>/status. Both are also measured on an empty root, so the cost
   per watch can be given apart from the interpreter and the daemon.
2. `--artefacts` known artefacts: that many rows in `artefacts`, in `file_state` (paths
   under a former root the agent no longer watches, so the startup reconcile of the
   watched root does not read them) and in the classifier's hash cache (`files`
   table), inserted with SQL; then the agent starts on the empty root. Reference: the
   same agent with an empty store.
3. `--known-files` empty files spread over the same tree, each with its `file_state`
   row (real inode and mtime) and hash-cache identity: the agent starts on the tree and
   its startup reconcile walks it and compares every file with the store, finding
   nothing to report. Reference: the agent on the tree without files and an empty store.

`fs.inotify.max_user_watches` is raised for the run if it is too low, and restored.

    .venv/bin/python -m bench.memory [--dirs 100000] [--artefacts 1000000] [--known-files 1000000]

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
HOST = "bench-memory"

WATCHDOG = textwrap.dedent(
    """
    import sys, time
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    obs = Observer()
    obs.schedule(FileSystemEventHandler(), sys.argv[1], recursive=True)
    obs.start()
    print("started", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        obs.stop()
        obs.join()
    """
)


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def inotify_watches(pid: int) -> int:
    """Watches the process holds, from the kernel's fdinfo (all its inotify instances)."""
    n = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds / fd) != "anon_inode:inotify":
                continue
            text = (Path(f"/proc/{pid}/fdinfo") / fd).read_text()
        except OSError:
            continue
        n += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
    return n


def settle(pid: int, want_watches: int, timeout: float) -> dict[str, Any]:
    """Wait for the watches, then for VmRSS to stop moving (< 1% over 3 s)."""
    t0 = time.monotonic()
    while inotify_watches(pid) < want_watches:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"pid {pid}: {inotify_watches(pid)} of {want_watches} watches")
        time.sleep(0.5)
    watched_after = time.monotonic() - t0
    last = status_kb(pid)["VmRSS"]
    stable = 0
    while stable < 3 and time.monotonic() - t0 < timeout:
        time.sleep(1)
        now = status_kb(pid)["VmRSS"]
        stable = stable + 1 if abs(now - last) <= last * 0.01 else 0
        last = now
    kb = status_kb(pid)
    return {
        "rss_mib": round(kb["VmRSS"] / 1024, 1),
        "hwm_mib": round(kb["VmHWM"] / 1024, 1),
        "watches": inotify_watches(pid),
        "ready_s": round(watched_after, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_config(work: Path, name: str, root: Path) -> Path:
    doc = {
        "agent": {"state_dir": str(work / f"state-{name}"), "host_id": HOST},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "sensors": {"enabled": ["files"]},
        "files": {"roots": [str(root)]},
    }
    cfg = work / f"{name}.yaml"
    cfg.write_text(json.dumps(doc))
    return cfg


def metric(url: str, name: str) -> float | None:
    """The sum of a metric's samples (all labels), None when it has none."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    values = [
        float(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    ]
    return sum(values) if values else None


def measure_agent(cfg: Path, watches: int, timeout: float) -> dict[str, Any]:
    url = f"http://{json.loads(cfg.read_text())['metrics']['listen']}/metrics"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(cfg), "run"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.monotonic()
        while True:  # the metrics endpoint, then the startup rescan done
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}")
            try:
                if (metric(url, "egress_agent_file_rescans_total") or 0) >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("agent: startup rescan not done")
            time.sleep(0.5)
        doc = settle(proc.pid, watches, timeout)
        doc["started_s"] = round(time.monotonic() - t0, 1)
        doc["rescan_events"] = int(metric(url, "egress_agent_file_rescan_events_total") or 0)
        return doc
    finally:
        stop(proc, signal.SIGTERM)


def stop(proc: subprocess.Popen[Any], sig: int) -> None:
    """Ask `proc` to stop with `sig`; kill it if it has not within a minute."""
    proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_watchdog(root: Path, watches: int, timeout: float) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return settle(proc.pid, watches, timeout)
    finally:
        stop(proc, signal.SIGINT)


def make_tree(root: Path, dirs: int) -> int:
    top = 100
    for i in range(dirs):
        (root / f"t{i % top:03d}" / f"d{i // top:06d}").mkdir(parents=True)
    return dirs + min(top, dirs) + 1  # leaves, their parents, the root


@contextmanager
def enough_watches(need: int) -> Iterator[None]:
    old = int(MAX_WATCHES.read_text())
    want = need * 2 + 100_000  # room for everyone else's watches on this host
    raised = False
    if old < want:
        try:
            MAX_WATCHES.write_text(f"{want}\n")
            raised = True
        except OSError as e:
            print(f"cannot raise {MAX_WATCHES} ({e}); keeping {old}", file=sys.stderr)
    try:
        yield
    finally:
        if raised:
            MAX_WATCHES.write_text(f"{old}\n")


def open_stores(cfg: Path) -> tuple[sqlite3.Connection, sqlite3.Connection, str]:
    """The agent's store (migrated by `db upgrade`) and its hash cache, plus a timestamp."""
    subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(cfg), "db", "upgrade"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    from agent.classify.hashing import HashCache

    state = Path(json.loads(cfg.read_text())["agent"]["state_dir"])
    HashCache(state / "hashcache.db").close()  # the classifier's own schema
    now = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
    return sqlite3.connect(state / "agent.db"), sqlite3.connect(state / "hashcache.db"), now


def fill_known(cfg: Path, count: int, former_root: str) -> None:
    """`count` artefacts, file_state rows and hash-cache identities, inserted with SQL."""
    db, cache, now = open_stores(cfg)
    shas = (hashlib.sha256(b"%d" % i).hexdigest() for i in range(count))
    step = 50_000
    for start in range(0, count, step):
        rows = [(i, next(shas)) for i in range(start, min(count, start + step))]
        db.executemany(
            "INSERT INTO artefacts (sha256, size, content_type, kinds, tags, matches, "
            "first_seen, last_seen) VALUES (?, ?, 'application/x-safetensors', "
            '\'["model_weights"]\', \'[{"kind": "model_weights", "evidence": "bench", '
            '"details": {"format": "safetensors"}}]\', \'[]\', ?, ?)',
            [(sha, 4096 + i, now, now) for i, sha in rows],
        )
        db.executemany(
            "INSERT INTO file_state (host_id, path, size, inode, mtime_ns, sha256, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    HOST,
                    f"{former_root}/d{i // 1000:04d}/w{i:07d}.safetensors",
                    *(4096 + i, 10_000_000 + i, 1_700_000_000_000_000_000 + i, sha, now),
                )
                for i, sha in rows
            ],
        )
        cache.executemany(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
            [
                (2049, 10_000_000 + i, 4096 + i, 1_700_000_000_000_000_000 + i, sha, time.time())
                for i, sha in rows
            ],
        )
        db.commit()
        cache.commit()
    db.close()
    cache.close()


EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def fill_known_files(cfg: Path, tree: Path, count: int) -> int:
    """`count` empty files over the tree's leaf directories, each known to the store."""
    db, cache, now = open_stores(cfg)
    leaves = [d for top in sorted(tree.iterdir()) for d in sorted(top.iterdir())]
    per_dir = -(-count // len(leaves))
    made = 0
    rows: list[tuple[Any, ...]] = []
    idents: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.executemany(
            "INSERT INTO file_state (host_id, path, size, inode, mtime_ns, sha256, updated_at) "
            "VALUES (?, ?, 0, ?, ?, ?, ?)",
            rows,
        )
        cache.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, 0, ?, ?, ?)", idents)
        db.commit()
        cache.commit()
        rows.clear()
        idents.clear()

    for leaf in leaves:
        for j in range(min(per_dir, count - made)):
            path = f"{leaf}/k{j:02d}.bin"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            st = os.lstat(path)
            rows.append((HOST, path, st.st_ino, st.st_mtime_ns, EMPTY_SHA, now))
            idents.append((st.st_dev, st.st_ino, st.st_mtime_ns, EMPTY_SHA, time.time()))
            made += 1
        if len(rows) >= 50_000:
            flush()
    flush()
    db.execute(
        "INSERT INTO artefacts (sha256, size, content_type, kinds, tags, matches, first_seen, "
        "last_seen) VALUES (?, 0, 'application/x-empty', '[]', '[]', '[]', ?, ?)",
        (EMPTY_SHA, now, now),
    )
    db.commit()
    db.close()
    cache.close()
    return made


def row(
    what: str, values: tuple[float, float, str], goal: str, limit: float | None, note: str
) -> dict[str, Any]:
    """One line of the comparisons table; `met` is agent ≤ limit × reference."""
    agent, reference, unit = values
    return {
        "what": what,
        "agent": agent,
        "reference": reference,
        "unit": unit,
        "ratio": round(agent / reference, 2) if reference > 0 else None,
        "goal": goal,
        "met": None if limit is None else reference > 0 and agent <= limit * reference,
        "note": note,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=100_000)
    ap.add_argument("--artefacts", type=int, default=1_000_000)
    ap.add_argument("--known-files", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        empty, tree = work / "empty", work / "tree"
        empty.mkdir()
        t0 = time.monotonic()
        dirs_total = make_tree(tree, args.dirs)
        made_s = time.monotonic() - t0
        with enough_watches(dirs_total):
            base = measure_agent(agent_config(work, "base", empty), 1, args.timeout)
            wd_base = measure_watchdog(empty, 1, args.timeout)
            agent = measure_agent(agent_config(work, "tree", tree), dirs_total, args.timeout)
            wd = measure_watchdog(tree, dirs_total, args.timeout)
        t0 = time.monotonic()
        known_cfg = agent_config(work, "known", empty)
        fill_known(known_cfg, args.artefacts, "/srv/former-root")
        fill_s = time.monotonic() - t0
        known = measure_agent(known_cfg, 1, args.timeout)
        store_mib = sum(
            f.stat().st_size for f in (work / "state-known").iterdir() if f.is_file()
        ) / (1 << 20)
        t0 = time.monotonic()
        files_cfg = agent_config(work, "files", tree)
        files_made = fill_known_files(files_cfg, tree, args.known_files)
        files_fill_s = time.monotonic() - t0
        with enough_watches(dirs_total):
            on_files = measure_agent(files_cfg, dirs_total, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def per_watch(big: dict[str, Any], small: dict[str, Any]) -> float:
        return round((big["rss_mib"] - small["rss_mib"]) * 1024 * 1024 / dirs_total)

    agent_pw, wd_pw = per_watch(agent, base), per_watch(wd, wd_base)
    comparisons = [
        row(
            f"RSS with {args.dirs:,} watched directories",
            (agent["rss_mib"], wd["rss_mib"], "MiB"),
            "none: for scale (the daemon's fixed cost is not watchdog's); next row",
            None,
            f"{agent['watches']:,} watches (fdinfo); agent on an empty root "
            f"{base['rss_mib']} MiB, watchdog {wd_base['rss_mib']} MiB; peak (VmHWM) "
            f"{agent['hwm_mib']} vs {wd['hwm_mib']} MiB; all watches in "
            f"{agent['ready_s']} s vs {wd['ready_s']} s",
        ),
        row(
            "RSS added per watched directory",
            (agent_pw, wd_pw, "bytes"),
            "≤ 2× watchdog",
            2.0,
            "(RSS at N dirs − RSS on an empty root) / watches",
        ),
        row(
            f"RSS with {args.artefacts:,} known artefacts",
            (known["rss_mib"], base["rss_mib"], "MiB"),
            "≤ 1.2× the agent with an empty store",
            1.2,
            f"artefacts, file_state (under a former root) and hash-cache rows; "
            f"store + cache {store_mib:,.0f} MiB on disk; peak {known['hwm_mib']} MiB; "
            f"ready in {known['started_s']} s vs {base['started_s']} s",
        ),
        row(
            f"RSS with {files_made:,} known files under the watched root",
            (on_files["rss_mib"], agent["rss_mib"], "MiB"),
            "≤ 1.5× the agent on the same directories with no files",
            1.5,
            f"after the startup reconcile (walk + compare with file_state) found them all "
            f"known ({on_files['rescan_events']} reported); peak (VmHWM) "
            f"{on_files['hwm_mib']} MiB; reconcile done {on_files['started_s']} s after start",
        ),
    ]
    print(
        json.dumps(
            {
                "comparisons": comparisons,
                "agent_empty_root": base,
                "agent_tree": agent,
                "watchdog_empty_root": wd_base,
                "watchdog_tree": wd,
                "agent_known_artefacts": known,
                "agent_known_files": on_files,
                "known_files_filled_s": round(files_fill_s, 1),
                "directories": dirs_total,
                "tree_made_s": round(made_s, 1),
                "known_filled_s": round(fill_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
