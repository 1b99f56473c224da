"""Done-when drill for the fleet store: agents keep every event through a PostgreSQL outage.

Three `egress-agent run` processes write synthetic events to a real PostgreSQL database
through a TCP proxy written here (127.0.0.1:<free port> → 127.0.0.1:5432), never by
stopping the shared server. The proxy cuts established connections mid-batch (RST),
refuses connections, and blackholes them (accepts, then forwards nothing: a peer that
never answers). Afterwards each agent's events are in the central store exactly once:
per host, the synthetic paths 0..N-1 each appear once, and no uid twice.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import free_port

pytestmark = [pytest.mark.drill, pytest.mark.slow]

PG = ("127.0.0.1", 5432)


def _hard_close(sock: socket.socket) -> None:
    """Cut a link at once, as a crashed peer or a firewall reset would.

    shutdown() first: close() alone does not end a socket while a pump thread is blocked
    in recv() on it, and the link would stall instead of being cut.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultyProxy:
    """A TCP proxy to PostgreSQL whose link can be cut, refused or blackholed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "up"  # up | refuse | blackhole
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._closed = False
        self.accepted = 0
        self.cuts = 0
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.settimeout(0.1)
        self._listener = s

    def url(self, direct: str) -> str:
        """The database of the URL `direct`, reached through this proxy."""
        database = direct.rsplit("/", 1)[1]
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with self._lock:
                self._conns.append(client)
            if self.mode == "blackhole":
                continue  # hold it open, never answer
            try:
                upstream = socket.create_connection(PG, timeout=5)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._conns.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole":  # stall mid-stream: bytes go nowhere
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        _hard_close(src)
        _hard_close(dst)

    def cut(self) -> int:
        """Reset every established connection (in the middle of whatever batch)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _hard_close(c)
        self.cuts += 1
        return len(conns)

    def refuse(self) -> None:
        """Connection refused: nothing listens on the port; established links are reset."""
        self.mode = "refuse"
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.cut()

    def blackhole(self) -> None:
        """Accept, then forward nothing; established links stall with their bytes in flight."""
        if self._listener is None:
            self._listen()
        self.mode = "blackhole"

    def restore(self) -> None:
        if self.mode == "blackhole":
            self.cut()  # stalled links would deliver stale bytes; a real peer had reset them
        if self._listener is None:
            self._listen()
        self.mode = "up"

    def close(self) -> None:
        self._closed = True
        self.cut()
        if self._listener is not None:
            self._listener.close()


@pytest.fixture
def proxy() -> Any:
    p = FaultyProxy()
    yield p
    p.close()


def _agent_doc(
    agent_config: dict[str, Any],
    tmp: Path,
    name: str,
    url: str,
    count: int,
    rate: float = 500.0,
    **database: Any,
) -> Any:
    """The config of agent `name`: `count` synthetic events at `rate` a second, stored at
    `url`; `database` overrides the store's settings."""
    doc = {k: dict(v) for k, v in agent_config.items()}
    doc["agent"] = {"state_dir": str(tmp / name), "hostname": name}
    doc["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    doc["database"] = {
        "url": url,
        "batch_size": 100,
        "flush_interval": 0.05,
        "forward_batch_size": 250,
        "forward_timeout": 2.0,
        "forward_backoff_max": 0.5,
        "forward_stop_seconds": 5.0,
        **database,
    }
    doc["sensors"] = {
        "enabled": ["synthetic"] if count else [],
        "synthetic_count": count,
        "synthetic_rate": rate,
    }
    # synthetic paths do not exist: there is nothing to classify, and the drill is
    # about the store
    doc["classify"] = {"enabled": False}
    return doc


def _sample(agent: Any, name: str) -> float:
    """Sum of a metric over all its label sets (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(agent.scrape()):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stored_paths(pg_url: str) -> dict[str, list[str]]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT h.hostname, f.path FROM file_events f JOIN hosts h ON h.id = f.host_id"
                )
            ).all()
            dup = c.execute(
                text("SELECT count(*) - count(DISTINCT uid) FROM file_events")
            ).scalar_one()
    finally:
        engine.dispose()
    assert dup == 0
    out: dict[str, list[str]] = {}
    for host, path in rows:
        out.setdefault(host, []).append(path)
    return out


def _expected(count: int) -> list[str]:
    return sorted(f"/synthetic/{i // 1000:04d}/file-{i:08d}.bin" for i in range(count))


def _emit_while_the_store_is_away(run_agent: Any, doc: Any, proxy: FaultyProxy) -> Any:
    """A first agent, started against the store; the store then goes away while it emits
    its `synthetic_count` events."""
    first = run_agent(doc, name="first")
    first.wait_metrics()
    proxy.refuse()
    count = doc["sensors"]["synthetic_count"]
    _wait(lambda: _sample(first, "egress_agent_sensor_events_total") == count, 30, "events")
    return first


def _forward_on_the_next_start(run_agent: Any, doc: Any, timeout: float) -> Any:
    """The same agent started again without sensors, once it has forwarded its spool."""
    doc["sensors"] = {"enabled": []}
    second = run_agent(doc, name="second")
    second.wait_metrics()
    _wait(lambda: _sample(second, "egress_agent_spool_events") == 0, timeout, "spool forwarded")
    return second


def test_three_agents_lose_nothing_through_an_outage(
    pg_url: str, proxy: FaultyProxy, run_agent: Any, agent_config: dict[str, Any], tmp_path: Path
) -> None:
    count = 4000  # 8 s at 500 events/s each: the outage falls in the middle
    names = ["lab-a", "lab-b", "lab-c"]
    agents = [
        run_agent(_agent_doc(agent_config, tmp_path, n, proxy.url(pg_url), count), name=n)
        for n in names
    ]
    for a in agents:
        a.wait_metrics()
    max_spooled = 0.0

    def watch(seconds: float) -> None:
        nonlocal max_spooled
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            max_spooled = max(
                max_spooled, *(_sample(a, "egress_agent_spool_events") for a in agents)
            )
            time.sleep(0.1)

    watch(1.0)
    proxy.cut()  # mid-batch resets
    watch(0.7)
    proxy.cut()
    proxy.refuse()  # server unreachable
    watch(2.0)
    proxy.blackhole()  # server accepts and never answers
    watch(3.0)
    proxy.restore()
    for _ in range(4):  # flapping: connections reset while the backlog drains
        watch(0.5)
        proxy.cut()
    proxy.restore()

    def drained() -> bool:
        return all(
            _sample(a, "egress_agent_sensor_events_total") == count
            and _sample(a, "egress_agent_spool_events") == 0
            for a in agents
        )

    _wait(drained, 90, "every agent to emit and forward all its events")
    errors = [_sample(a, "egress_agent_fleet_forward_errors_total") for a in agents]
    dropped = [_sample(a, "egress_agent_events_dropped_total") for a in agents]
    for a in agents:
        assert a.stop() == 0, a.stderr()
    # the drill really happened: every agent saw the outage and spooled through it
    assert all(e > 0 for e in errors), errors
    assert max_spooled > 0
    assert dropped == [0, 0, 0]
    stored = _stored_paths(pg_url)
    assert sorted(stored) == names
    for n in names:
        assert sorted(stored[n]) == _expected(count), f"{n}: {len(stored[n])} rows"


def test_spool_survives_a_stop_while_the_store_is_away(
    pg_url: str, proxy: FaultyProxy, run_agent: Any, agent_config: dict[str, Any], tmp_path: Path
) -> None:
    count = 600
    doc = _agent_doc(
        agent_config,
        tmp_path,
        "lab-d",
        proxy.url(pg_url),
        count,
        rate=300.0,
        forward_stop_seconds=0.5,
    )
    # the central store goes away while the agent works; then it stops
    first = _emit_while_the_store_is_away(run_agent, doc, proxy)
    _wait(lambda: _sample(first, "egress_agent_fleet_connected") == 0, 30, "outage seen")
    spooled = _sample(first, "egress_agent_spool_events")
    assert spooled > 0
    assert first.stop() == 0, first.stderr()

    proxy.restore()  # the next start sends what the last one spooled
    second = _forward_on_the_next_start(run_agent, doc, 30)
    assert _sample(second, "egress_agent_fleet_forwarded_events_total") >= spooled
    assert second.stop() == 0, second.stderr()
    assert sorted(_stored_paths(pg_url)["lab-d"]) == _expected(count)


def test_agent_starts_while_the_central_store_is_down(
    pg_url: str, proxy: FaultyProxy, run_agent: Any, agent_config: dict[str, Any], tmp_path: Path
) -> None:
    proxy.refuse()
    doc = _agent_doc(agent_config, tmp_path, "lab-e", proxy.url(pg_url), 100)
    agent = run_agent(doc, name="down")
    agent.wait_metrics()
    _wait(lambda: _sample(agent, "egress_agent_spool_events") == 100, 30, "events spooled")
    proxy.restore()
    _wait(lambda: _sample(agent, "egress_agent_spool_events") == 0, 30, "spool forwarded")
    assert agent.stop() == 0, agent.stderr()
    assert sorted(_stored_paths(pg_url)["lab-e"]) == _expected(100)


def test_a_stalled_batch_is_abandoned_after_the_forward_timeout(
    pg_url: str, proxy: FaultyProxy, tmp_path: Path
) -> None:
    """A peer that takes the bytes and never answers: only the attempt deadline sees it."""
    from sqlalchemy.exc import OperationalError

    from agent.events import FileAction, FileEvent
    from agent.store.db import make_engine, upgrade
    from agent.store.forwarder import Forwarder
    from agent.store.spool import Spool

    direct = make_engine(pg_url)
    upgrade(direct)
    engine = make_engine(proxy.url(pg_url), pool_pre_ping=False)
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    fwd = Forwarder(spool, engine, "h-stall", "stall", timeout=1.0)
    fwd.commit([FileEvent(action=FileAction.WRITTEN, path="/before")])
    assert fwd.forward_once() == 1  # the pool now holds a live connection through the proxy

    proxy.blackhole()  # that connection now swallows the next batch
    fwd.commit([FileEvent(action=FileAction.WRITTEN, path=f"/during/{i}") for i in range(50)])
    started = time.monotonic()
    with pytest.raises(OperationalError), fwd._guard.deadline(fwd.timeout):
        fwd.forward_once()
    assert fwd._guard.fired
    assert time.monotonic() - started < 5
    assert len(spool) == 50  # nothing acknowledged

    proxy.restore()
    engine.dispose()
    assert fwd.forward_once() == 50
    with direct.connect() as c:
        n = c.execute(text("SELECT count(*) FROM file_events WHERE host_id = 'h-stall'"))
        assert n.scalar_one() == 51
    spool.close()
    engine.dispose()
    direct.dispose()


def test_kill_9_while_forwarding_loses_and_duplicates_nothing(
    pg_url: str, proxy: FaultyProxy, run_agent: Any, agent_config: dict[str, Any], tmp_path: Path
) -> None:
    """The spool is the only copy while the store is away: a crash mid-forward keeps it."""
    import signal

    from agent.store.spool import read_stats

    count = 3000
    # a slow drain, so the kill lands inside it
    doc = _agent_doc(
        agent_config, tmp_path, "lab-k", proxy.url(pg_url), count, rate=0.0, forward_batch_size=10
    )
    first = _emit_while_the_store_is_away(run_agent, doc, proxy)

    def all_spooled_or_sent() -> bool:
        sent = _sample(first, "egress_agent_fleet_forwarded_events_total")
        return sent + _sample(first, "egress_agent_spool_events") == count

    _wait(all_spooled_or_sent, 30, "every event in the spool or the store")
    before = _sample(first, "egress_agent_fleet_forwarded_events_total")
    proxy.restore()
    _wait(
        lambda: _sample(first, "egress_agent_fleet_forwarded_events_total") > before,
        30,
        "draining",
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    left = read_stats(tmp_path / "lab-k" / "spool.db")
    assert left is not None and 0 < left.events < count, left

    second = _forward_on_the_next_start(run_agent, doc, 60)
    assert second.stop() == 0, second.stderr()
    assert sorted(_stored_paths(pg_url)["lab-k"]) == _expected(count)
