"""Benchmark: `egress-agent replay` against `tshark -q -z conv,tcp` on the same large pcap.

The capture is synthesised with struct (no scapy in the loop): `--flows` TCP uploads of
known sizes in MTU-sized segments with the receiver's ACKs, each opened by a real TLS
ClientHello with SNI, interleaved, one flow crossing the 2^32 sequence wrap, plus DNS
answers. Both tools read the same file from the page cache (each is run once to warm
it). Byte counts are checked three ways: the agent's flows against what the generator
wrote, and against tshark's own per-stream payload sums (`-T fields -e tcp.len`).
Prints one JSON object (see bench/__main__.py) on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.sensors.network.tls import client_hello

REPO = Path(__file__).resolve().parent.parent
MSS = 1448
CLIENT = "10.9.0.5"
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"


def _csum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Writer:
    def __init__(self, path: Path) -> None:
        self.f = path.open("wb", buffering=1 << 22)
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.t = 1_700_000_000.0
        self.frames = 0
        self.zero = bytes(65536)

    def ip(
        self, src: str, dst: str, proto: int, l4: bytes, payload_len: int, payload: bytes
    ) -> None:
        total = 20 + len(l4) + payload_len
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0x4000,
            64,
            proto,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        body = payload if payload else self.zero[:payload_len]
        frame_len = 14 + total
        self.t += 0.00001
        sec = int(self.t)
        self.f.write(struct.pack("<IIII", sec, int((self.t - sec) * 1e6), frame_len, frame_len))
        self.f.write(MAC)
        self.f.write(hdr)
        self.f.write(l4)
        self.f.write(body)
        self.frames += 1

    def tcp(
        self,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes = b"",
        length: int = 0,
    ) -> None:
        n = len(payload) or length
        l4 = struct.pack(
            "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0
        )
        self.ip(src, dst, 6, l4, n, payload)

    def close(self) -> None:
        self.f.close()


def make_pcap(path: Path, flows: int, total_bytes: int) -> dict[tuple[str, int], int]:
    """Write the capture; return (server address, client port) -> payload bytes sent."""
    w = Writer(path)
    per_flow = total_bytes // flows
    truth: dict[tuple[str, int], int] = {}
    state = []
    for i in range(flows):
        server = f"10.9.{1 + i // 250}.{1 + i % 250}"
        sport = 20000 + i
        isn = 0xFFFFFFFF - 3 * per_flow // 4 if i == 0 else 1000 * i  # flow 0 wraps
        hello = client_hello(f"host{i}.example.com")
        # DNS answer naming this server, then the handshake and the ClientHello
        w.ip(
            CLIENT, "10.9.0.53", 17, struct.pack("!HHHH", 30000 + i, 53, 8 + 30, 0), 30, b"\0" * 30
        )
        w.tcp(CLIENT, sport, server, 443, isn, 0, 0x02)
        w.tcp(server, 443, CLIENT, sport, 5000, isn + 1, 0x12)
        w.tcp(CLIENT, sport, server, 443, isn + 1, 5001, 0x18, hello)
        state.append([server, sport, isn + 1 + len(hello), per_flow])
        truth[(server, sport)] = len(hello) + per_flow
    active = list(range(flows))
    while active:
        nxt = []
        for i in active:
            server, sport, seq, left = state[i]
            for _ in range(8):  # a burst per flow, then the next flow: interleaved
                if left <= 0:
                    break
                n = min(MSS, left)
                w.tcp(CLIENT, sport, server, 443, seq, 5001, 0x10, length=n)
                seq += n
                left -= n
                if left % (2 * MSS) < MSS:
                    w.tcp(server, 443, CLIENT, sport, 5001, seq, 0x10)
            state[i][2], state[i][3] = seq, left
            if left > 0:
                nxt.append(i)
            else:
                w.tcp(CLIENT, sport, server, 443, seq, 5001, 0x11)
                w.tcp(server, 443, CLIENT, sport, 5001, seq + 1, 0x11)
                w.tcp(CLIENT, sport, server, 443, seq + 1, 5002, 0x10)
        active = nxt
    w.close()
    return truth


def _timed(cmd: list[str], **kw: object) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0, str(res.stdout)


def tshark_payload(path: Path) -> dict[tuple[str, int], int]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.len",
            "-Y",
            "tcp.len > 0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sums: dict[tuple[str, int], int] = defaultdict(int)
    for line in out.splitlines():
        src, dst, sport, n = line.split("\t")
        if src == CLIENT:
            sums[(dst, int(sport))] += int(n)
    return dict(sums)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=float, default=float(os.environ.get("BENCH_REPLAY_BYTES", 2e9)))
    ap.add_argument("--flows", type=int, default=50)
    ap.add_argument("--pcap", type=Path, default=None, help="keep the capture here")
    args = ap.parse_args()
    if shutil.which("tshark") is None:
        print(json.dumps({"skipped": "tshark not installed"}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="ea-bench-replay-"))
    path = args.pcap or tmp / "big.pcap"
    try:
        t0 = time.perf_counter()
        truth = make_pcap(path, args.flows, int(args.bytes))
        made = time.perf_counter() - t0
        agent_cmd = [sys.executable, "-m", "agent", "replay", "--json", str(path)]
        tshark_cmd = ["tshark", "-r", str(path), "-q", "-z", "conv,tcp"]
        _timed(tshark_cmd)  # warm the page cache for both
        agent_s, out = _timed(
            agent_cmd, cwd=REPO, env={**os.environ, "EGRESS_AGENT_CONFIG": "/dev/null"}
        )
        tshark_s, conv = _timed(tshark_cmd)
        flows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        agent = {
            (f["dst_ip"], f["src_port"]): f["bytes_out"] for f in flows if f["protocol"] == "tcp"
        }
        named = sum(1 for f in flows if f["protocol"] == "tcp" and f.get("sni"))
        tshark_bytes = tshark_payload(path)
        conversations = sum(1 for line in conv.splitlines() if "<->" in line)
        ok = agent == truth == tshark_bytes and conversations == len(truth)
        size_gb = path.stat().st_size / 1e9
        print(
            json.dumps(
                {
                    "pcap_bytes": path.stat().st_size,
                    "generate_s": round(made, 2),
                    "flows": len(truth),
                    "flows_with_sni": named,
                    "bytes_match": ok,
                    "comparisons": [
                        {
                            "what": f"replay of a {size_gb:.2f} GB pcap ({len(truth)} TCP flows, "
                            "MTU-sized frames)",
                            "agent": round(agent_s, 2),
                            "reference": round(tshark_s, 2),
                            "unit": "s wall",
                            "ratio": round(agent_s / tshark_s, 3),
                            "goal": "< 1 (faster than tshark -q -z conv,tcp)",
                            "met": agent_s < tshark_s and ok,
                            "note": "byte counts: agent == generator == tshark tcp.len sums: "
                            + str(ok),
                        }
                    ],
                }
            )
        )
    finally:
        if args.pcap is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
