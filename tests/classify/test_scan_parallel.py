"""`scan` over many files on worker processes: the same lines as one process, in walk
order, the hash cache filled by the workers, and a worker that dies costs one file."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from agent.classify.hashing import HashCache
from agent.classify.parallel import ProcessClassifier
from agent.cli.scan import PARALLEL_FROM
from agent.config import ClassifySection
from agent.events import Artefact
from agent.fingerprint import ident_of
from tests.classify import corpus as C
from tests.conftest import cli, write_config


def _config(tmp_path: Path, name: str, workers: int) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        {
            "agent": {"state_dir": str(tmp_path / f"state-{name}")},
            "classify": {"use_magika": False, "workers": workers},
        },
    )


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    """More files than `scan` classifies in its own process, of many kinds."""
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    for i in range(PARALLEL_FROM + 40):
        (root / "src" / f"m{i:03d}.py").write_text(
            f'"""Solver {i}: 稀土萃取分离 process."""\n# step {i}\ndef f(x):\n    return x * {i}\n'
        )
    C.safetensors_file(root / "model.safetensors")
    C.parquet_file(root / "table.parquet")
    C.docx_file(root / "asr.docx", "语音识别 speech recognition 麦克风阵列")
    (root / "same-a.txt").write_text("one content, two names\n" * 20)
    (root / "same-b.txt").write_text("one content, two names\n" * 20)
    # copies far apart in walk order: classified by different workers at the same time
    copy = b"\n".join(b"%d,%d,%d" % (i, i * i, i % 7) for i in range(400))
    (root / "aa-first.csv").write_bytes(copy)
    (root / "src" / "m050-copy.csv").write_bytes(copy)
    (root / "zz-last.csv").write_bytes(copy)
    os.mkfifo(root / "fifo")
    return root


def _scan(config: Path, root: Path) -> list[str]:
    res = cli("scan", "--json", str(root), config=config, timeout=180)
    return res.stdout.splitlines()


def test_processes_print_what_one_process_prints(tmp_path: Path, big_tree: Path) -> None:
    one = _scan(_config(tmp_path, "one", 1), big_tree)
    two_cfg = _config(tmp_path, "two", 2)
    two = _scan(two_cfg, big_tree)
    assert two == one  # same lines, same order (walk order), byte for byte
    docs = [json.loads(line) for line in two]
    assert len(docs) == PARALLEL_FROM + 40 + 9
    by_name = {d["path"].rsplit("/", 1)[-1]: d for d in docs}
    assert by_name["model.safetensors"]["kinds"] == ["model_weights"]
    assert by_name["fifo"]["skipped"] == "special_file"
    assert by_name["m007.py"]["kinds"] == ["source_code"]
    # lineage as in walk order: the first of the copies is the origin, the others copies
    sha = by_name["aa-first.csv"]["sha256"]
    assert by_name["aa-first.csv"]["parents"] == []
    assert by_name["m050-copy.csv"]["parents"] == [sha] == by_name["zz-last.csv"]["parents"]
    # the workers wrote the hash cache: every regular file has its identity there
    db = sqlite3.connect(tmp_path / "state-two" / "hashcache.db")
    (files,) = db.execute("SELECT count(*) FROM files").fetchone()
    db.close()
    assert files == len(docs) - 1  # all but the FIFO
    assert _scan(two_cfg, big_tree) == two  # a second scan, from the cache, says the same


def test_text_output_from_processes(tmp_path: Path, big_tree: Path) -> None:
    one = cli("scan", str(big_tree), config=_config(tmp_path, "t1", 1)).stdout
    two = cli("scan", str(big_tree), config=_config(tmp_path, "t2", 2)).stdout
    assert two == one
    assert "model_weights: safetensors header" in two


def _dies_on_marked(path: str, a: Artefact, _ident: tuple[int, int] | None) -> str:
    """A render that takes its worker process down for one file (as a native parser's
    crash would): runs in the worker."""
    if path.endswith("crash.py") and a.skipped != "worker_died":
        os._exit(70)
    return f"{path} {a.sha256} {','.join(a.kinds)} {a.skipped}"


def test_a_dying_worker_costs_one_file(tmp_path: Path) -> None:
    paths = []
    for i in range(30):
        p = tmp_path / (f"f{i:02d}.py" if i != 17 else "crash.py")
        p.write_text(f"x = {i}\n")
        paths.append(str(p))
    pool = ProcessClassifier(
        ClassifySection(use_magika=False), tmp_path / "hc.db", (), _dies_on_marked, 2, chunk=4
    )
    try:
        got = list(pool.map(iter(paths)))
    finally:
        pool.close()
    assert [p for p, _ in got] == paths  # every path once, in order
    lines = dict(got)
    assert lines[paths[17]].endswith("None  worker_died")
    assert all(" source_code None" in lines[p] for p in paths if p != paths[17])
    cache = HashCache(tmp_path / "hc.db")  # the chunks that finished are in the cache
    st = os.stat(paths[0])
    assert cache.lookup(*ident_of(st)) is not None
    cache.close()


def test_buffered_cache_reads_a_snapshot_and_its_own_writes(tmp_path: Path) -> None:
    a = HashCache(tmp_path / "hc.db", buffered=True)
    b = HashCache(tmp_path / "hc.db", buffered=True)
    a.store(1, 2, 3, 4, 9, "aa" * 32)
    a.store_result("aa" * 32, "v", "k", {"content_type": "text/plain"})
    assert a.lookup(1, 2, 3, 4, 9) == "aa" * 32  # before any flush
    assert a.result("aa" * 32, "v", "k") == {"content_type": "text/plain"}
    assert b.lookup(1, 2, 3, 4, 9) is None  # not yet written
    b.store(5, 6, 7, 8, 9, "bb" * 32)
    a.flush()
    assert b.lookup(5, 6, 7, 8, 9) == "bb" * 32  # its own, from memory
    b.flush()
    # each reads the cache as it was when it opened: what the other worker concluded
    # meanwhile does not change its own conclusions
    assert b.lookup(1, 2, 3, 4, 9) is None and a.lookup(5, 6, 7, 8, 9) is None
    a.close()
    b.close()
    c = HashCache(tmp_path / "hc.db")  # the next scan finds both
    assert c.lookup(1, 2, 3, 4, 9) == "aa" * 32 and c.lookup(5, 6, 7, 8, 9) == "bb" * 32
    assert c.lookup(1, 2, 3, 5, 9) is None  # another mtime: not this content
    assert c.lookup(1, 2, 3, 4, 8) is None  # another ctime (a rewrite, mtime put back)
    assert c.result("aa" * 32, "v", "k") == {"content_type": "text/plain"}
    c.close()
    d = HashCache(tmp_path / "hc.db", buffered=True)  # a worker of the next scan
    assert d.lookup(1, 2, 3, 4, 9) == "aa" * 32 and d.result("aa" * 32, "v", "k") is not None
    assert d.lookup(9, 9, 9, 9, 9) is None and d.result("cc" * 32, "v", "k") is None
    d.close()
