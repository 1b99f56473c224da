"""The pipeline stage, the persistent hash cache and lineage through a real store (SQLite)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from agent.classify import Classifier
from agent.classify.hashing import HashCache
from agent.classify.stage import ClassifyStage
from agent.config import ClassifySection
from agent.events import Artefact, FileAction, FileEvent, Flow, Tag
from agent.pipeline import Pipeline, StageSpec
from agent.store.db import make_engine, upgrade
from agent.store.writer import write_batch
from tests.classify import corpus as C
from tests.classify.test_stage_reuse import written
from tests.store.test_artefacts import store_weights


def hashed() -> float:
    return REGISTRY.get_sample_value("egress_agent_hashed_bytes_total") or 0.0


def ev(action: FileAction, path: Path, dest: Path | None = None) -> FileEvent:
    return FileEvent(action, str(path), dest_path=str(dest) if dest else None)


def test_stage_attaches_artefacts_by_action(rt: Any, tmp_path: Path) -> None:
    stage = ClassifyStage(rt)
    w = C.safetensors_file(tmp_path / "m.safetensors")
    out = stage(ev(FileAction.CREATED, w))
    assert isinstance(out, FileEvent) and out.artefact is not None
    assert out.artefact.kinds == ("model_weights",)
    assert out.artefact.sha256 == hashlib.sha256(w.read_bytes()).hexdigest()
    # READ: only what the cache knows; nothing for an unseen file
    other = C.gguf_file(tmp_path / "never-seen.gguf")
    assert stage(ev(FileAction.READ, other)).artefact is None  # type: ignore[union-attr]
    read = stage(ev(FileAction.READ, w))
    assert isinstance(read, FileEvent) and read.artefact == out.artefact
    # DELETED and flows pass unchanged
    gone = ev(FileAction.DELETED, tmp_path / "gone")
    assert stage(gone) is gone
    now = datetime.now(UTC)
    flow = Flow("tcp", "10.0.0.1", 1, "8.8.8.8", 443, now, now)
    assert stage(flow) is flow
    # MOVED: the destination is classified. A rename moves the inode's ctime, which is in
    # the hash cache's key (a rewrite that put the mtime back moves it too): the bytes are
    # read once more, the result is the same content's
    dest = tmp_path / "renamed.bin"
    os.rename(w, dest)
    before = hashed()
    moved = stage(ev(FileAction.MOVED, w, dest))
    assert isinstance(moved, FileEvent) and moved.artefact is not None
    assert moved.artefact.kinds == ("model_weights",)
    assert moved.artefact.sha256 == out.artefact.sha256
    assert hashed() == before + dest.stat().st_size


def test_hash_cache_survives_a_restart(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(random.Random(1).randbytes(3 << 20))
    db = tmp_path / "hc.db"
    settings = ClassifySection(use_magika=False)
    c1 = HashCache(db)
    first = Classifier(settings, cache=c1).classify_path(str(f))
    c1.close()
    before = hashed()
    hits = REGISTRY.get_sample_value("egress_agent_hash_cache_total", {"result": "hit"}) or 0
    c2 = HashCache(db)  # a new process would open the same file
    again = Classifier(settings, cache=c2).classify_path(str(f))
    c2.close()
    assert again.sha256 == first.sha256
    assert hashed() == before  # not one byte re-hashed
    assert (
        REGISTRY.get_sample_value("egress_agent_hash_cache_total", {"result": "hit"}) or 0
    ) > hits
    # a change of content (new mtime and size) is re-hashed
    with open(f, "ab") as fh:
        fh.write(b"more")
    c3 = HashCache(db)
    changed = Classifier(settings, cache=c3).classify_path(str(f))
    c3.close()
    assert changed.sha256 == hashlib.sha256(f.read_bytes()).hexdigest() != first.sha256


def test_lineage_from_the_store(rt: Any, tmp_path: Path) -> None:
    """Another host's agent tagged this content; a copy here inherits its tags unparsed."""
    blob = tmp_path / "opaque.bin"
    blob.write_bytes(random.Random(2).randbytes(4096))
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    known = Artefact(
        sha256=sha,
        size=4096,
        content_type="application/x-pytorch",
        tags=(
            Tag(
                "model_weights",
                "seen on gpu-07: pytorch, 7e9 parameters",
                {"format": "pytorch", "parameters": 7_000_000_000},
            ),
        ),
    )
    write_batch(
        rt.engine, "host-2", [FileEvent(FileAction.WRITTEN, "/gpu-07/ckpt.pt", artefact=known)]
    )
    stage = ClassifyStage(rt)
    out = stage(ev(FileAction.CREATED, blob))
    assert isinstance(out, FileEvent) and out.artefact is not None
    assert out.artefact.parents == (sha,)
    assert out.artefact.tags[0].details["parameters"] == 7_000_000_000


def test_archive_lineage_reaches_the_store(rt: Any, tmp_path: Path) -> None:
    from sqlalchemy import select

    from agent.store.models import Lineage

    w = C.safetensors_file(tmp_path / "m.safetensors")
    bundle = C.tar_gz(tmp_path / "upload.tar.gz", [w])
    stage = ClassifyStage(rt)
    events = [stage(ev(FileAction.CREATED, p)) for p in (w, bundle)]
    write_batch(rt.engine, rt.host_id, events)  # type: ignore[arg-type]
    with rt.engine.connect() as conn:
        links = conn.execute(select(Lineage.parent_sha256, Lineage.child_sha256)).all()
    w_sha = hashlib.sha256(w.read_bytes()).hexdigest()
    b_sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert (w_sha, b_sha) in [tuple(row) for row in links]


def test_slow_file_is_deferred_not_lost(rt: Any, tmp_path: Path) -> None:
    rt.settings.classify.event_timeout = 0.0001
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(3).randbytes(64 << 20))
    stage = ClassifyStage(rt)
    out = stage(ev(FileAction.WRITTEN, big))
    assert isinstance(out, FileEvent) and out.artefact is not None
    assert out.artefact.skipped == "deferred"
    stage.pool.shutdown(wait=True)  # the worker still finishes and fills the cache
    assert stage.classifier.cached(str(big)) is not None


def test_pipeline_keeps_order_and_every_event(rt: Any, tmp_path: Path) -> None:
    files = []
    for i in range(30):
        p = tmp_path / f"f{i}.py"
        p.write_text(f"# file {i}\nx = {i}\n")
        files.append(p)
    out: list[Any] = []
    pipe = Pipeline([StageSpec("classify", ClassifyStage(rt))], [out.append], queue_size=8)
    pipe.start()
    for p in files:
        assert pipe.emit(ev(FileAction.WRITTEN, p))
    pipe.stop()
    assert [e.path for e in out] == [str(p) for p in files]
    assert all(e.artefact.kinds == ("source_code",) for e in out)


def test_copy_then_rename_keeps_tags(rt: Any, tmp_path: Path) -> None:
    stage = ClassifyStage(rt)
    src = C.onnx_file(tmp_path / "model.onnx")
    first = stage(ev(FileAction.CREATED, src))
    copy = tmp_path / "backup" / "model-copy.dat"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    second = stage(ev(FileAction.CREATED, copy))
    assert isinstance(first, FileEvent) and isinstance(second, FileEvent)
    assert second.artefact is not None and first.artefact is not None
    assert second.artefact.tags == first.artefact.tags
    assert second.artefact.parents == (first.artefact.sha256,)


def test_fast_results_do_not_deadlock_the_stage(rt: Any, tmp_path: Path) -> None:
    """Regression: a future done before its callback was added ran the callback under the
    stage's lock and hung the pipeline (found by the daemon wiring test)."""
    import threading

    stage = ClassifyStage(rt)
    done = threading.Event()

    def run() -> None:
        for i in range(200):
            stage(ev(FileAction.CREATED, tmp_path / f"missing-{i}"))
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert done.wait(10), "the classify stage hung"


def test_lineage_lookup_on_a_postgresql_fleet_store(pg_url: str) -> None:
    from agent.classify.lineage import store_lookup

    engine = make_engine(pg_url)
    upgrade(engine)
    sha = "ab" * 32
    store_weights(engine, sha, host="host-9")
    known = store_lookup(engine, sha)
    assert known is not None and known.tags[0].kind == "model_weights"
    assert [(m.category, m.count, m.confidence) for m in known.matches] == [("pii", 3, "medium")]
    assert known.origin is None  # from the store: always inherited lineage
    assert store_lookup(engine, "cd" * 32) is None
    engine.dispose()


def test_hash_cache_prune_forgets_old_identities(tmp_path: Path) -> None:
    import sqlite3
    import time as _time

    db = tmp_path / "hc.db"
    cache = HashCache(db)
    cache.store(1, 2, 3, 4, 6, "aa" * 32)
    cache.store_result("aa" * 32, "v", "none", {"content_type": "x", "tags": []})
    cache.store(1, 5, 3, 4, 6, "bb" * 32)
    cache.flush()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE files SET seen = ? WHERE inode = 2", (_time.time() - 100 * 86400,))
    assert cache.prune(90) == 1
    assert cache.lookup(1, 2, 3, 4, 6) is None
    assert cache.result("aa" * 32, "v", "none") is None  # its result went with it
    assert cache.lookup(1, 5, 3, 4, 6) == "bb" * 32
    cache.close()


def test_overdue_workers_do_not_stall_the_pipeline(rt: Any, tmp_path: Path) -> None:
    rt.settings.classify.event_timeout = 0.0001
    rt.settings.classify.workers = 1
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(4).randbytes(64 << 20))
    small = tmp_path / "small.py"
    small.write_text("x = 1\n")
    stage = ClassifyStage(rt)
    first = stage(ev(FileAction.WRITTEN, big))
    second = stage(ev(FileAction.WRITTEN, small))
    assert first.artefact.skipped == "deferred"  # type: ignore[union-attr]
    assert second.artefact.skipped == "busy"  # type: ignore[union-attr]
    import time as _time

    deadline = _time.monotonic() + 30
    while stage.status()["classify"]["in_flight"] and _time.monotonic() < deadline:  # type: ignore[index]
        _time.sleep(0.05)
    stage.timeout = 30  # the worker is free again: events are classified as usual
    third = stage(ev(FileAction.WRITTEN, small))
    assert third.artefact.kinds == ("source_code",)  # type: ignore[union-attr]


def test_rewrite_in_place_with_the_mtime_put_back_is_classified_anew(
    rt: Any, tmp_path: Path
) -> None:
    """An insider who overwrites a file's bytes in place (same size, same inode) and puts
    its mtime back must not get the old content's hash and kinds recorded: the ctime,
    which the kernel moves and no utimensat can set, is in the identity the stage's memo
    and the hash cache key on."""
    stage = ClassifyStage(rt)
    w = C.safetensors_file(tmp_path / "m.safetensors")
    first = stage(written(w))
    assert isinstance(first, FileEvent) and first.artefact is not None
    assert first.artefact.kinds == ("model_weights",)
    st = os.stat(w)
    other = random.Random(7).randbytes(st.st_size)
    with open(w, "r+b") as fh:
        fh.write(other)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(w)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    second = stage(written(w))
    assert isinstance(second, FileEvent) and second.artefact is not None
    assert second.artefact.sha256 == hashlib.sha256(other).hexdigest()
    assert "model_weights" not in second.artefact.kinds
