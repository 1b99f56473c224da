"""`egress-agent scan` as a user runs it: JSON per file, recursion, cache across runs, store."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.classify import corpus as C
from tests.conftest import cli, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "agent.yaml",
        {"agent": {"state_dir": str(tmp_path / "state")}, "classify": {"use_magika": False}},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "models").mkdir(parents=True)
    C.safetensors_file(root / "models" / "m.safetensors")
    C.gguf_file(root / "models" / "weights.txt")  # misleading name
    C.git_repo(root / "repo")
    (root / "docs").mkdir()
    C.docx_file(root / "docs" / "asr.docx", "语音识别 speech recognition 麦克风阵列")
    os.mkfifo(root / "fifo")
    bad = os.path.join(os.fsencode(root), b"bad-\xff.csv")
    with open(bad, "w") as f:
        f.write("a,b\n1,2\n")
    return root


def scan_json(config: Path, *paths: Path | str) -> list[dict[str, Any]]:
    res = cli("scan", "--json", *[str(p) for p in paths], config=config, timeout=120)
    return [json.loads(line) for line in res.stdout.splitlines()]


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["path"].rsplit("/", 1)[-1]: d for d in docs}


def test_scan_json_recursive(config: Path, tree: Path) -> None:
    docs = by_name(scan_json(config, tree))
    st = docs["m.safetensors"]
    assert st["kinds"] == ["model_weights"]
    assert (
        st["sha256"] == hashlib.sha256((tree / "models" / "m.safetensors").read_bytes()).hexdigest()
    )
    assert st["tags"][0]["details"]["format"] == "safetensors"
    assert docs["weights.txt"]["tags"][0]["details"]["format"] == "gguf"
    assert docs["solver.py"]["tags"][0]["details"]["git_remote"].endswith("secret-project.git")
    assert docs["fifo"]["skipped"] == "special_file"
    assert docs["bad-\\xff.csv"]["kinds"] == ["dataset"]
    # shipped policy packs give the categories: the ASR document matches
    asr = docs["asr.docx"]
    assert "CN-CAT-086501X-ASR" in {m["category"] for m in asr["matches"]}
    keys = {"category", "count", "pack", "distinct", "confidence", "basis"}
    assert all(set(m) == keys for m in asr["matches"])
    # .git/objects is excluded by files.exclude
    assert not any("/.git/objects/" in d["path"] for d in docs.values())


def test_second_scan_reads_nothing(config: Path, tmp_path: Path) -> None:
    """Same inode, size, mtime and ctime: the cached hash is used, the bytes are not read
    again. A rewrite in place that keeps the size and puts the mtime back is hashed again:
    the kernel moved the ctime, which no utimensat can put back."""
    f = tmp_path / "data.bin"
    f.write_bytes(b"A" * 100_000)
    first = scan_json(config, f)[0]
    assert first["sha256"] == hashlib.sha256(b"A" * 100_000).hexdigest()
    cache = sqlite3.connect(tmp_path / "state" / "hashcache.db")
    with cache:  # a mark only a cache hit can report
        assert cache.execute("UPDATE files SET sha256 = ?", ("ab" * 32,)).rowcount == 1
    cache.close()
    assert scan_json(config, f)[0]["sha256"] == "ab" * 32  # not read again
    st = os.stat(f)
    with open(f, "r+b") as fh:  # same size, same inode; then put the mtime back
        fh.write(b"B" * 100_000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns and os.stat(f).st_size == st.st_size
    third = scan_json(config, f)[0]
    assert third["sha256"] == hashlib.sha256(b"B" * 100_000).hexdigest()


def test_hash_cache_from_before_the_ctime_key_is_upgraded(config: Path, tmp_path: Path) -> None:
    """A cache written by an older agent (no ctime column) gains it; its rows match no
    file any more, so a file is hashed once more, never given another content's hash."""
    f = tmp_path / "data.bin"
    f.write_bytes(b"C" * 5000)
    st = os.stat(f)
    (tmp_path / "state").mkdir(exist_ok=True)
    old = sqlite3.connect(tmp_path / "state" / "hashcache.db")
    old.executescript(
        "CREATE TABLE files (device INTEGER NOT NULL, inode INTEGER NOT NULL,"
        " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,"
        " seen REAL NOT NULL, PRIMARY KEY (device, inode));"
    )
    with old:
        old.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, 0)",
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, "cd" * 32),
        )
    old.close()
    assert scan_json(config, f)[0]["sha256"] == hashlib.sha256(b"C" * 5000).hexdigest()
    assert scan_json(config, f)[0]["sha256"] == hashlib.sha256(b"C" * 5000).hexdigest()


def test_scan_store_records_scanned_events(config: Path, tree: Path, tmp_path: Path) -> None:
    cli("scan", "--store", str(tree / "models"), config=config)
    db = sqlite3.connect(tmp_path / "state" / "agent.db")
    rows = db.execute("SELECT action, sha256 FROM file_events ORDER BY path").fetchall()
    kinds = db.execute("SELECT kinds FROM artefacts").fetchall()
    db.close()
    assert {r[0] for r in rows} == {"scanned"} and len(rows) == 2
    assert all(json.loads(k[0]) == ["model_weights"] for k in kinds)


def test_scan_text_output_and_errors(config: Path, tree: Path) -> None:
    res = cli("scan", str(tree / "models"), config=config)
    assert "model_weights: safetensors header" in res.stdout
    missing = cli("scan", "/nonexistent/x", config=config, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
