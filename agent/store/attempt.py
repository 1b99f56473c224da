"""A deadline for one forwarding attempt (agent/store/forwarder.py).

An attempt that hangs — a peer that accepts and never answers — is abandoned after
`database.forward_timeout`: a timer shuts down the sockets of the connections the attempt
checked out, which wakes libpq with an error (TCP keepalives alone cannot see a peer that
acknowledges packets and never replies).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event


class AttemptGuard:
    """Abandons an attempt that outlives its deadline by shutting down its sockets."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._armed = False
        self.fired = False
        event.listen(engine, "connect", self._track)
        event.listen(engine, "checkout", self._track)

    def _track(self, dbapi_conn: Any, *_: Any) -> None:
        fileno = getattr(dbapi_conn, "fileno", None)
        with self._lock:
            if not self._armed or fileno is None:
                return
            try:
                # a dup keeps the socket alive even if libpq closes its fd meanwhile, so
                # the timer can never shut down an unrelated descriptor that reused it
                self._socks.append(socket.socket(fileno=os.dup(fileno())))
            except (OSError, ValueError):
                pass

    def watch(self, dbapi_conn: Any) -> None:
        """Cover a connection checked out before this attempt (one that an earlier attempt
        handed to the next batch, agent/store/rows_pipeline.py) by its deadline too."""
        self._track(dbapi_conn)

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.fired = True
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        timer = threading.Timer(max(seconds, 0.01), self._fire)
        with self._lock:
            self._armed, self.fired = True, False
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self._lock:
                self._armed = False
                for s in self._socks:
                    s.close()
                self._socks.clear()
