"""A private PostgreSQL cluster for the big fleet runs (`python -m bench.fleet --private-server`).

A thousand agents each keep a connection open (the forwarder's pool), and the shared
server's `max_connections = 100` cannot take them; the 100 M-event growth also wants a
bigger WAL budget than a shared server should be given. So the big runs start their own
server: `initdb` into a temporary directory, sized like a small dedicated central store
(settings in SERVER_CONF, reported with the results), stopped and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path(os.environ.get("EGRESS_PG_BIN", "/usr/lib/postgresql/15/bin"))

SERVER_CONF = {
    "shared_buffers": "2GB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "maintenance_work_mem": "512MB",
    "work_mem": "16MB",
    "effective_cache_size": "8GB",
    "wal_compression": "on",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def private_cluster(max_connections: int, base: Path | None = None) -> Iterator[str]:
    """Yield an admin URL (database `postgres`) of a fresh cluster; remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ea-fleet-pg-", dir=base))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    conf = {
        **SERVER_CONF,
        "max_connections": str(max_connections),
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{root}'",
    }
    with (data / "postgresql.conf").open("a") as f:
        for k, v in conf.items():
            f.write(f"{k} = {v}\n")
    log = root / "server.log"
    subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
