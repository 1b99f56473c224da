"""The receive buffer of the sensor's kernel sockets: past net.core.rmem_max with
CAP_NET_ADMIN, capped at it without (in a child that lost the capability)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sensors.network.sockbuf import set_receive_buffer

RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text())
WANTED = RMEM_MAX * 2  # more than SO_RCVBUF alone may ask for
# the kernel doubles what it is given (room for its own bookkeeping)
_PROBE = f"""
import socket
from agent.sensors.network.sockbuf import set_receive_buffer
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
set_receive_buffer(s, {WANTED})
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_ADMIN (root)")


@needs_root
def test_with_cap_net_admin_the_buffer_passes_rmem_max() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        set_receive_buffer(s, WANTED)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * WANTED


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_the_buffer_is_capped_not_refused() -> None:
    res = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable],
        input=_PROBE,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert int(res.stdout) == 2 * RMEM_MAX
