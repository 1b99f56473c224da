"""What a quiet agent costs: CPU and wake-ups per thread while idle, and CPU to READY.

Three configurations run one after the other, each as `egress-agent run` under a
NOTIFY_SOCKET this module listens on (what systemd's `Type=notify` does): no sensors;
the file sensor on a quiet watched root (a few hundred files nobody touches); the file
and network sensors (the network sensor on the loopback of a network namespace made for
the run, so no other process's traffic reaches it). For each it reports

- start-up: the agent's CPU seconds (user + system) from exec to `READY=1`, beside
  `python -c pass` started from the same interpreter in the same run;
- idle: after `--settle` seconds (the start-up rescan and the first-run jobs are done),
  CPU as a percentage of one core and wake-ups (voluntary context switches) per second
  over `--seconds`, for the whole process and per OS thread (`ea-*` names, set with
  prctl; CPU from /proc/<pid>/task/<tid>/schedstat, in nanoseconds),

beside a reference daemon idling over the same windows: Prometheus's node_exporter
(`prometheus-node-exporter`, a Go daemon that does nothing until scraped) when it is
installed, else an idle Python interpreter blocked on an Event (the floor: no timers).

    .venv/bin/python -m bench.idle [--seconds 60] [--settle 20]

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
IDLE_GOAL = 0.2  # % of one core
START_GOAL = 0.5  # CPU seconds to READY


def process_cpu(pid: int) -> float:
    """utime + stime of the whole process (threads that exited included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid: int) -> dict[int, dict[str, Any]]:
    """tid -> OS name, CPU nanoseconds (schedstat) and voluntary/involuntary switches."""
    out: dict[int, dict[str, Any]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we looked
        sw = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                sw[key] = int(value)
        out[int(task.name)] = {
            "name": name,
            "ns": ns,
            "wakeups": sw.get("voluntary_ctxt_switches", 0),
            "preempted": sw.get("nonvoluntary_ctxt_switches", 0),
        }
    return out


def measure(pids: dict[str, int], seconds: float) -> dict[str, dict[str, Any]]:
    """Each process's idle figures over the same `seconds` window."""
    before = {k: (threads(p), process_cpu(p)) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    result: dict[str, dict[str, Any]] = {}
    for key, pid in pids.items():
        after, cpu1 = threads(pid), process_cpu(pid)
        old, cpu0 = before[key]
        per: dict[str, dict[str, float]] = {}
        total_ns = total_wake = 0
        for tid, now in after.items():
            was = old.get(tid, {"ns": 0, "wakeups": 0, "preempted": 0})
            ns = now["ns"] - was["ns"]
            wake = now["wakeups"] - was["wakeups"] + now["preempted"] - was["preempted"]
            total_ns += ns
            total_wake += wake
            slot = per.setdefault(now["name"], {"cpu_pct": 0.0, "wakeups_per_s": 0.0, "n": 0})
            slot["cpu_pct"] += ns / 1e9 / elapsed * 100
            slot["wakeups_per_s"] += wake / elapsed
            slot["n"] += 1
        for slot in per.values():
            slot["cpu_pct"] = round(slot["cpu_pct"], 4)
            slot["wakeups_per_s"] = round(slot["wakeups_per_s"], 2)
        result[key] = {
            "seconds": round(elapsed, 1),
            "cpu_pct": round(total_ns / 1e9 / elapsed * 100, 4),
            "cpu_pct_ticks": round((cpu1 - cpu0) / elapsed * 100, 3),
            "wakeups_per_s": round(total_wake / elapsed, 2),
            "threads": dict(sorted(per.items(), key=lambda kv: -kv[1]["cpu_pct"])),
        }
    return result


@contextlib.contextmanager
def namespace() -> Iterator[list[str]]:
    """A network namespace with only its loopback up (root only), as a command prefix."""
    name = f"ea-idle-{os.getpid()}"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield []
        return
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if not made:
        yield []
        return
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def quiet_root(root: Path) -> None:
    """A watched root with a few hundred files in a few directories, never touched."""
    for d in range(10):
        sub = root / f"dir{d}"
        sub.mkdir(parents=True)
        for i in range(30):
            (sub / f"note{i}.txt").write_text(f"quiet file {d}/{i}\n")


class Agent:
    """`egress-agent run` under our NOTIFY_SOCKET; start-up CPU is read at READY=1."""

    def __init__(self, work: Path, label: str, sensors: list[str], prefix: list[str]) -> None:
        self.work = work / label
        self.work.mkdir()
        self.prefix = prefix
        root = self.work / "root"
        quiet_root(root)
        doc: dict[str, Any] = {
            "agent": {"state_dir": str(self.work / "state"), "log_level": "warning"},
            "metrics": {"listen": "127.0.0.1:0"},
            "sensors": {"enabled": sensors},
            "files": {"roots": [str(root)], "follow_mounts": False},
            "network": {"interfaces": ["lo"] if "network" in sensors else []},
        }
        self.cfg = self.work / "agent.yaml"
        self.cfg.write_text(yaml.safe_dump(doc))
        self.sock_path = self.work / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.log = (self.work / "agent.log").open("wb")
        # an installed agent has its modules compiled (pip writes the .pyc files): a
        # PYTHONDONTWRITEBYTECODE in this shell must not make every start compile them
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["NOTIFY_SOCKET"] = str(self.sock_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def launch(self) -> None:
        cmd = [sys.executable, "-m", "agent", "--config", str(self.cfg), "run"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.prefix + cmd, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # `ip netns exec` execs the command in place: same pid

    def wait_ready(self, timeout: float = 120.0) -> dict[str, float]:
        self.sock.settimeout(timeout)
        while True:
            try:
                msg = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                raise RuntimeError(f"no READY=1: {self.tail()}") from None
            if "READY=1" in msg.split("\n"):
                cpu = process_cpu(self.pid)
                return {
                    "cpu_seconds_to_ready": round(cpu, 3),
                    "wall_seconds_to_ready": round(time.monotonic() - self.started, 3),
                }

    def tail(self) -> str:
        return (self.work / "agent.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()
        self.sock.close()


def reference_daemon(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if exe is not None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [exe, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return proc, "prometheus-node-exporter, not scraped"
    code = "import threading; threading.Event().wait()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    return proc, "idle Python interpreter blocked on an Event (node_exporter not installed)"


def python_startup(runs: int = 5) -> float:
    """CPU seconds of `python -c pass` (the interpreter's own start-up), median of runs."""
    figures = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return sorted(figures)[len(figures) // 2]


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


CONFIGS = {"no_sensors": [], "files": ["files"], "files_network": ["files", "network"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--only", choices=sorted(CONFIGS), action="append")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="idle-") as tmp, namespace() as prefix:
        work = Path(tmp)
        ref, ref_what = reference_daemon(work)
        try:
            py_start = python_startup()
            for label, sensors in CONFIGS.items():
                if args.only and label not in args.only:
                    continue
                agent = Agent(work, label, sensors, prefix)
                try:
                    # the first start of a host creates the store (migrations); what is
                    # measured is a restart, the everyday case, with the store at head
                    agent.launch()
                    first = agent.wait_ready()
                    agent.stop()
                    agent.launch()
                    ready = agent.wait_ready()
                    time.sleep(args.settle)
                    if agent.proc is None or agent.proc.poll() is not None:
                        raise RuntimeError(f"agent exited: {agent.tail()}")
                    window = measure({"agent": agent.pid, "reference": ref.pid}, args.seconds)
                finally:
                    agent.close()
                results[label] = {"first_start": first, "start": ready, **window}
        finally:
            ref.send_signal(signal.SIGTERM)
            ref.wait(timeout=30)
    comparisons: list[dict[str, Any]] = []
    for label, r in results.items():
        a, ref_pct = r["agent"]["cpu_pct"], r["reference"]["cpu_pct"]
        comparisons.append(
            {
                "what": f"idle CPU, {label.replace('_', ' + ')}",
                "agent": a,
                "reference": ref_pct,
                "unit": "% of a core",
                "ratio": round(a / ref_pct, 2) if ref_pct > 0 else None,
                "goal": f"<= {IDLE_GOAL} %",
                "met": a <= IDLE_GOAL,
                "note": f"wake-ups/s agent {r['agent']['wakeups_per_s']}, "
                f"reference {r['reference']['wakeups_per_s']}; reference: {ref_what}",
            }
        )
    for label, r in results.items():
        s = r["start"]["cpu_seconds_to_ready"]
        comparisons.append(
            {
                "what": f"CPU from exec to READY=1, {label.replace('_', ' + ')}",
                "agent": s,
                "reference": round(py_start, 3),
                "unit": "s",
                "ratio": round(s / py_start, 1) if py_start > 0 else None,
                "goal": f"<= {START_GOAL} s",
                "met": s <= START_GOAL,
                "note": "reference: `python -c pass` (interpreter start-up alone)",
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "idle",
                "seconds": args.seconds,
                "settle": args.settle,
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "reference": ref_what,
                "python_c_pass_cpu_seconds": round(py_start, 3),
                "network_namespace": bool(prefix),
                "runs": results,
                "comparisons": comparisons,
            }
        )
    )


if __name__ == "__main__":
    main()
