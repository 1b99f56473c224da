"""Benchmark: `egress-agent replay` of a capture with many distinct UDP flows.

A scan, a DNS flood or a P2P client opens a new UDP "flow" with every packet. The
capture is written with struct in one buffered pass (no scapy per packet): `--flows`
packets from one client, each to its own destination address and port, `--pps` packets
per second of capture time. The replay runs as a user runs it (`python -m agent replay
--json`, output to /dev/null) measuring wall time and the child's
peak RSS (`os.wait4`), once with the flow table as configured
(`--max-flows`) and, when given, once with a second bound for comparison. Prints one JSON
object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
PAYLOAD = b"\x00" * 32


def make_pcap(path: Path, flows: int, pps: int = 10_000) -> int:
    """One UDP packet per flow, each to a distinct (address, port); returns bytes written."""
    rec = struct.Struct("<IIII")
    ip = struct.Struct("!BBHHHBBH4s4s")
    udp = struct.Struct("!HHHH")
    src = bytes([10, 9, 0, 5])
    ip_len = 20 + 8 + len(PAYLOAD)
    frame_len = len(ETH) + ip_len
    t0 = 1_700_000_000
    with path.open("wb", buffering=1 << 22) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(flows):
            # 198.18.0.0/15 (benchmarking range) has 131072 addresses: vary the port too
            dst = bytes([198, 18 + (i >> 16 & 1), i >> 8 & 0xFF, i & 0xFF])
            dport = 1024 + (i >> 17) % 60000
            sport = 20000 + i % 40000
            usec = i * 1_000_000 // pps
            f.write(rec.pack(t0 + usec // 1_000_000, usec % 1_000_000, frame_len, frame_len))
            f.write(ETH)
            f.write(ip.pack(0x45, 0, ip_len, i & 0xFFFF, 0, 64, 17, 0, src, dst))
            f.write(udp.pack(sport, dport, 8 + len(PAYLOAD), 0))
            f.write(PAYLOAD)
    return path.stat().st_size


def run_replay(pcap: Path, config: Path) -> dict[str, float]:
    """Wall time, peak RSS and flow records of one `egress-agent replay --json`."""
    started = time.perf_counter()
    out = Path(str(config) + ".out")
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config), "replay", "--json", str(pcap)],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"replay exited {proc.returncode}")
    records = evicted = 0
    with out.open("rb") as f:
        for line in f:
            records += 1
            evicted += b'"close_reason": "evicted"' in line
    out.unlink()
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "records": records,
        "evicted": evicted,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--pps", type=int, default=10_000)
    ap.add_argument("--max-flows", type=int, nargs="+", default=[65536])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="udp-flows-") as tmp:
        d = Path(tmp)
        pcap = d / "flows.pcap"
        t = time.perf_counter()
        size = make_pcap(pcap, args.flows, args.pps)
        written = time.perf_counter() - t
        runs = []
        for bound in args.max_flows:
            cfg = d / f"agent-{bound}.yaml"
            doc = {"agent": {"state_dir": str(d / "state")}, "network": {"max_flows": bound}}
            cfg.write_text(yaml.safe_dump(doc))
            runs.append({"max_flows": bound, **run_replay(pcap, cfg)})
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(
        json.dumps(
            {
                "flows": args.flows,
                "pcap_bytes": size,
                "pcap_write_seconds": round(written, 2),
                "runs": runs,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
