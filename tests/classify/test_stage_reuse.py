"""The classify stage classifies an unchanged file once for all its events (real files,
real hash cache and store): a `created` shares the job of the `written` that follows it
in the batch, a later event of the same identity reuses the result, and what could come
out differently (a changed file, other categories, archive members) is classified again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from agent.categories import CategorySpec
from agent.classify.stage import ClassifyStage
from agent.events import Event, FileAction, FileEvent
from tests.classify import corpus as C
from tests.conftest import registry_value


def jobs() -> float:
    """Classifications run so far: each one looks its file's identity up in the hash cache."""
    return sum(
        registry_value("egress_agent_hash_cache_total", {"result": r}) for r in ("hit", "miss")
    )


def created(path: Path) -> FileEvent:
    """As the file sensor sends it: a regular file's `created` has no size or mtime."""
    st = os.lstat(path)
    return FileEvent(FileAction.CREATED, str(path), inode=st.st_ino, device=st.st_dev)


def written(path: Path) -> FileEvent:
    """As the file sensor sends it: the lstat's identity, ctime included."""
    st = os.lstat(path)
    return FileEvent(
        FileAction.WRITTEN,
        str(path),
        size=st.st_size,
        inode=st.st_ino,
        device=st.st_dev,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


def artefact_of(e: Event) -> Any:
    assert isinstance(e, FileEvent) and e.artefact is not None
    return e.artefact


def test_created_and_written_of_a_file_share_one_classification(rt: Any, tmp_path: Path) -> None:
    stage = ClassifyStage(rt)
    files = []
    for i in range(40):
        p = tmp_path / "burst" / f"f{i:02d}.py"
        p.parent.mkdir(exist_ok=True)
        p.write_text(f"# module {i}\nvalue = {i}\n")
        files.append(p)
    events: list[Event] = []
    for p in files:
        events += [created(p), written(p)]
    before = jobs()
    out = stage.batch(events, lambda: None)
    assert jobs() - before == len(files)  # one job a file, not one an event
    assert [e.uid for e in out] == [e.uid for e in events]  # every event, in order
    for i, p in enumerate(files):
        first, second = artefact_of(out[2 * i]), artefact_of(out[2 * i + 1])
        assert first == second
        assert first.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert first.kinds == ("source_code",)


def test_a_created_without_its_written_in_the_batch_is_still_classified(
    rt: Any, tmp_path: Path
) -> None:
    stage = ClassifyStage(rt)
    p = tmp_path / "alone.py"
    p.write_text("x = 1\n")
    other = tmp_path / "other.py"
    other.write_text("y = 2\n")
    out = stage.batch([created(p), written(other)], lambda: None)
    assert artefact_of(out[0]).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert artefact_of(out[1]).sha256 == hashlib.sha256(other.read_bytes()).hexdigest()


def test_an_unchanged_file_is_not_classified_again_a_changed_one_is(
    rt: Any, tmp_path: Path
) -> None:
    stage = ClassifyStage(rt)
    p = tmp_path / "model.safetensors"
    C.safetensors_file(p)
    first = artefact_of(stage(written(p)))
    before = jobs()
    again = artefact_of(stage(written(p)))  # a rescan's event, a second close of the file
    assert jobs() == before
    assert again == first and again.kinds == ("model_weights",)
    C.safetensors_file(p, n=32)  # rewritten: another size, another mtime
    changed = artefact_of(stage(written(p)))
    assert jobs() == before + 1
    assert changed.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() != first.sha256


def test_other_categories_classify_the_file_again(rt: Any, tmp_path: Path) -> None:
    in_force: list[tuple[CategorySpec, ...]] = [()]
    stage = ClassifyStage(rt, categories=lambda: in_force[0])
    p = tmp_path / "widget.py"
    p.write_text("# the widget design\nwidget = 1\n")
    plain = artefact_of(stage(written(p)))
    assert plain.matches == ()
    in_force[0] = (
        CategorySpec(code="widget", pack="test", keywords=("widget",)),
    )  # a policy reload
    before = jobs()
    judged = artefact_of(stage(written(p)))
    assert jobs() == before + 1
    assert [m.category for m in judged.matches] == ["widget"]


def test_an_archive_with_members_is_classified_again(rt: Any, tmp_path: Path) -> None:
    """Members' lineage is what the parse that finds them reports: such a result is not
    reused, so a second event gets what classifying the file again gives, as before."""
    stage = ClassifyStage(rt)
    w = C.safetensors_file(tmp_path / "m.safetensors")
    bundle = C.tar_gz(tmp_path / "upload.tar.gz", [w])
    first = artefact_of(stage(written(bundle)))
    assert hashlib.sha256(w.read_bytes()).hexdigest() in first.parents
    before = jobs()
    again = artefact_of(stage(written(bundle)))
    assert jobs() == before + 1
    assert again.sha256 == first.sha256
