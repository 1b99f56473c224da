"""`egress-agent replay` input and output bounds: only regular files are read (a FIFO
used to block for ever), and flows are printed and stored as they end once there are
more than a sort's worth, so memory does not grow with the capture."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.cli import replay as cli_replay
from agent.events import Flow
from agent.sensors.network.pcapfile import PcapError, mapped
from bench.udp_flows import make_pcap
from tests.conftest import cli, write_config


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "agent.yaml", {"agent": {"state_dir": str(tmp_path / "s")}})


def test_a_fifo_is_refused_at_once_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    res = cli("replay", str(fifo), config=_config(tmp_path), check=False, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"Error: {fifo}: not a regular file (a FIFO); replay reads a saved capture: "
        "save the stream to a file first"
    ]
    with pytest.raises(PcapError, match="a character device"), mapped(Path("/dev/zero")):
        pass


def _flow(i: int) -> Flow:
    t = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=100 - i)
    return Flow("udp", "10.0.0.1", 1000 + i, "198.18.0.1", 53, t, t, bytes_out=i)


def test_small_outputs_are_sorted_large_ones_stream(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_replay, "SORTED_UP_TO", 3)
    sink = cli_replay.FlowSink(as_json=True, store=None)
    for i in range(3):
        sink(_flow(i))
    assert capsys.readouterr().out == ""  # held for the sort
    sink.close()
    ports = [json.loads(line)["src_port"] for line in capsys.readouterr().out.splitlines()]
    assert ports == [1002, 1001, 1000]  # start order

    stored: list[int] = []
    sink = cli_replay.FlowSink(as_json=True, store=lambda b: stored.append(len(b)))
    monkeypatch.setattr(cli_replay, "STORE_BATCH", 2)
    for i in range(6):
        sink(_flow(i))
    # past the bound: the held four in start order, then each as it ends
    printed = [json.loads(line)["src_port"] for line in capsys.readouterr().out.splitlines()]
    assert printed == [1003, 1002, 1001, 1000, 1004, 1005]
    sink.close()
    assert sum(stored) == 6 and max(stored) <= 2


def test_replay_stores_a_large_capture_in_batches(tmp_path: Path) -> None:
    pcap = tmp_path / "many.pcap"
    make_pcap(pcap, 2500)
    cfg = _config(tmp_path)
    res = cli("replay", str(pcap), "--store", "--json", config=cfg)
    assert len(res.stdout.splitlines()) == 2500
    assert "stored 2500 flows" in res.stderr
    with sqlite3.connect(tmp_path / "s" / "agent.db") as conn:
        assert conn.execute("SELECT count(*) FROM flows").fetchone() == (2500,)
    conn.close()
