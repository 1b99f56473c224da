"""The fleet link as the config describes it: the spool, the central store's engine and
the forwarder between them (agent/store/forwarder.py), built but not started.

Apart from the forwarder because these are deployment choices, not forwarding: the
spool's place and bound, a pool of its own without pre-ping, libpq's keepalive and
user-timeout limits beside the attempt deadline, the write path and the linger.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url

from agent.config import Settings
from agent.store.bulk import copy_direct
from agent.store.db import make_engine
from agent.store.forwarder import Forwarder, WriteFn
from agent.store.spool import Spool
from agent.store.writer import write_batch


def open_forwarder(settings: Settings, host_id: str, hostname: str) -> Forwarder:
    """The spool and forwarder for `database.url`, from the config (not started)."""
    db = settings.database
    spool = Spool(db.spool_path or settings.state_dir / "spool.db", db.spool_max_bytes)
    # its own small pool, no pre-ping: a ping on a stalled connection would hang outside
    # the attempt's deadline; dead connections are dropped after a failure instead
    kwargs: dict[str, Any] = {"pool_pre_ping": False, "pool_size": 1, "max_overflow": 2}
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        # libpq's own limits beside the attempt deadline: a peer that vanishes is noticed
        # by keepalives while idle and by tcp_user_timeout while data is unacknowledged
        kwargs["connect_args"] = {
            "connect_timeout": max(1, min(int(db.forward_timeout), 10)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(db.forward_timeout * 1000),
        }
    engine = make_engine(settings.database_url, **kwargs)
    write: WriteFn = copy_direct if db.forward_method == "copy" else write_batch
    return Forwarder(
        spool,
        engine,
        host_id,
        hostname,
        batch_size=db.forward_batch_size,
        write=write,
        timeout=db.forward_timeout,
        backoff_max=db.forward_backoff_max,
        stop_seconds=db.forward_stop_seconds,
        auto_upgrade=db.auto_upgrade,
        linger=db.forward_linger,
    )
