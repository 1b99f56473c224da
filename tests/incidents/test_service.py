"""The correlator as the daemon runs it: a sink thread over a real store."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from agent.config import IncidentsSection
from agent.events import FileAction
from agent.feedback import ReadWatch
from agent.incidents.chain import verify_entries
from agent.incidents.queries import chain_entries, incident_documents, list_incidents
from agent.incidents.service import Correlator
from tests.conftest import decision_labels, registry_value
from tests.incidents.helpers import CURL, SHELL, SIZE, archive, fev, flow, rd_assets, story


def test_story_through_the_correlator_is_one_incident(store: Engine) -> None:
    before = registry_value(
        "egress_agent_incidents_opened_total", {"rule": "ear.model_weights", "severity": "high"}
    )
    c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection(checkpoint_every=50))
    c.start()
    for e in story():
        c.submit(e)
    # the same upload again within the dedup window: an update, not a new incident
    c.submit(fev(FileAction.READ, "/data/tmp/x.tgz", 30, archive(), CURL))
    c.submit(flow(30, 50, SIZE + 30_000, decisions=story()[-1].decisions))
    c.stop()
    docs = list_incidents(store)
    assert [d["kind"] for d in docs] == ["exfiltration"]
    doc = docs[0]
    assert len(doc["evidence"]["flows"]) == 2 and doc["bytes_out"] == 2 * (SIZE + 30_000)
    assert (
        registry_value(
            "egress_agent_incidents_opened_total",
            {"rule": "ear.model_weights", "severity": "high"},
        )
        == before + 1
    )
    assert registry_value("egress_agent_incidents_open", {"severity": "high"}) >= 1
    assert registry_value("egress_agent_chain_checkpoint_timestamp_seconds", {}) > 0
    entries = list(chain_entries(store))
    assert [e.record_type for e in entries] == ["genesis", "incident", "update", "checkpoint"]
    assert verify_entries(entries, incident_documents(store)).ok


def test_restart_keeps_the_chain_and_dedups_against_the_store(store: Engine) -> None:
    events = story()  # the same events (same uids) delivered again after a restart
    for _run in range(2):
        c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection())
        c.start()
        for e in events:
            c.submit(e)
        c.stop()
    docs = list_incidents(store)
    assert len(docs) == 1  # the replayed events added nothing new
    types = [e.record_type for e in chain_entries(store)]
    assert types == ["genesis", "incident", "checkpoint", "checkpoint"]
    assert verify_entries(chain_entries(store), incident_documents(store)).ok


def test_tagged_paths_become_paths_of_interest(store: Engine) -> None:
    watched: list[str] = []
    reads = ReadWatch()
    reads.attach(lambda p: watched.append(p) or True)
    c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection(), read_watch=reads)
    c.start()
    for e in story():
        c.submit(e)
    c.stop()
    assert watched == [
        "/data/ckpt/model.safetensors",
        "/data/tmp/model-copy.safetensors",
        "/data/tmp/notes.bin",
        "/data/tmp/x.tgz",
    ]


def test_a_full_correlation_queue_drops_and_counts_instead_of_blocking(store: Engine) -> None:
    import time

    c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection(), queue_size=1)
    labels = {"queue": "incidents", "reason": "queue_full"}
    before = registry_value("egress_agent_events_dropped_total", labels)
    started = time.monotonic()
    for i in range(3):  # nobody drains the queue: the thread was never started
        c.submit(flow(i, i + 1, 100))
    assert time.monotonic() - started < 2
    assert registry_value("egress_agent_events_dropped_total", labels) == before + 2


def test_a_batch_is_queued_at_once_keeping_only_what_correlation_uses(store: Engine) -> None:
    """The pipeline hands the correlator whole batches (`submit_many`): the same events
    as `submit` one by one would queue, in order; a full queue drops and counts the rest
    after its patience instead of holding the pipeline."""
    import time

    c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection(), queue_size=3)
    bare = fev(FileAction.WRITTEN, "/tmp/plain.txt", 1.0, None)  # nothing to correlate
    useful = [flow(1, 2, 100), fev(FileAction.WRITTEN, "/home/a/x.bin", 1.0, None, CURL)]
    c.submit_many([bare, useful[0], bare, useful[1]])
    assert c.queue.qsize() == 2
    labels = {"queue": "incidents", "reason": "queue_full"}
    before = registry_value("egress_agent_events_dropped_total", labels)
    started = time.monotonic()
    c.submit_many([flow(i, i + 1, 100) for i in range(3)])  # room for one: nobody drains
    assert time.monotonic() - started < 2
    assert registry_value("egress_agent_events_dropped_total", labels) == before + 2
    queued, _ = c.queue.get_batch(10, 0)
    assert queued[:2] == useful and len(queued) == 3


class _Proxy:
    """A TCP forwarder to PostgreSQL that can be switched on later (the store "comes back")."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.port, self.target = port, target
        self._srv: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        import socket
        import threading

        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self._srv = srv

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def accept() -> None:
            while True:
                try:
                    client, _ = srv.accept()
                except OSError:
                    return
                upstream = socket.create_connection(self.target)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()


def test_store_outage_keeps_findings_until_the_store_is_back(pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    from agent.store.db import make_engine
    from tests.conftest import free_port
    from tests.incidents.helpers import new_store

    new_store(pg_url).dispose()  # the schema exists; the agent just cannot reach it yet
    port = free_port()
    url = make_url(pg_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    engine = make_engine(url)
    c = Correlator(engine, "host-a", "lab-ws-1", IncidentsSection())
    c.start()  # returns at once although the store is down
    for e in story():
        c.submit(e)
    deadline = time.monotonic() + 10
    while not c._pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(c._pending) == 1 and c.findings == 0
    proxy = _Proxy(port, ("127.0.0.1", 5432))
    proxy.start()
    try:
        deadline = time.monotonic() + 60
        while c._pending and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not c._pending and c.findings == 1
        c.stop()
        assert [d["kind"] for d in list_incidents(engine)] == ["exfiltration"]
        types = [e.record_type for e in chain_entries(engine)]
        assert types == ["genesis", "incident", "checkpoint"]
    finally:
        engine.dispose()
        proxy.stop()


def test_transfer_decisions_are_counted_once_and_name_the_incident(store: Engine) -> None:
    """The daemon's policy (here the shipped rd-assets pack) judges the upload; each
    decision reaches egress_agent_decisions_total once, however often the story is seen."""

    class Holder:
        current = rd_assets()

    labels = decision_labels("rd-assets", "rd-assets-model-weights-out", "medium", "foreign")
    before = registry_value("egress_agent_decisions_total", labels)
    holder: Any = Holder()  # what the correlator reads of a PolicyHolder: `current`
    c = Correlator(store, "host-a", "lab-ws-1", IncidentsSection(), policy=holder)
    c.start()
    # the archive written by the shell, uploaded by its child curl: a child_process story
    c.submit(fev(FileAction.WRITTEN, "/data/tmp/x.tgz", 0, archive(), SHELL))
    c.submit(flow(2, 9, SIZE))
    deadline = time.monotonic() + 30
    while c.findings < 1 and time.monotonic() < deadline:  # the flow is held ~1 s
        time.sleep(0.05)
    assert c.findings == 1
    # curl's own read arrives late: a closer (same_process) match refines the story
    c.submit(fev(FileAction.READ, "/data/tmp/x.tgz", 1, archive(), CURL))
    c.stop()
    assert c.findings == 2
    docs = list_incidents(store)
    assert [(d["kind"], d["rule_id"]) for d in docs] == [
        ("exfiltration", "rd-assets-model-weights-out")
    ]
    assert registry_value("egress_agent_decisions_total", labels) == before + 1
