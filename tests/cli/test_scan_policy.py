"""`scan`'s start: the categories read in a forked child beside the classifier's import
when workers will be forked (the same as read in the process itself, an invalid policy
said once), and the hash cache opened on a thread meanwhile (a failure is one line)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.cli.scan import PARALLEL_FROM
from agent.cli.scan_policy import categories, on_thread
from agent.config import load_settings
from tests.conftest import cli, write_config


def _config(tmp_path: Path, **policies: object) -> Path:
    return write_config(
        tmp_path / "agent.yaml",
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "classify": {"use_magika": False, "workers": 2},
            "policies": policies,
        },
    )


def _codes(cats: tuple[object, ...]) -> list[str]:
    return [c.code for c in cats]  # type: ignore[attr-defined]


def test_packs_read_on_a_thread_are_the_packs_read_here(tmp_path: Path) -> None:
    # (the forked child is tried through the command, below and in
    # tests/classify/test_scan_parallel.py: one worker, with the thread, and two, with
    # the child, print the same bytes; a fork here would copy pytest's own threads)
    s = load_settings(str(_config(tmp_path)))
    here = categories(s)
    assert len(here) > 10  # the shipped packs
    got = on_thread(s)
    assert _codes(got()) == _codes(here)
    assert got() is got()  # waited for once, then kept


def test_a_many_file_scan_matches_categories_from_the_child(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(PARALLEL_FROM + 5):  # enough for worker processes
        (root / f"m{i:03d}.py").write_text(f'"""Solver {i}: 稀土萃取分离 process."""\n')
    res = cli("scan", "--json", str(root), config=_config(tmp_path), timeout=180)
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == PARALLEL_FROM + 5
    assert all("CN-CAT-RE-REFINING" in {m["category"] for m in d["matches"]} for d in docs)


def test_the_compiled_policy_is_kept_in_the_state_dir_and_used_again(tmp_path: Path) -> None:
    from agent.policy.cache import CACHE_NAME

    root = tmp_path / "tree"
    root.mkdir()
    for i in range(PARALLEL_FROM + 5):
        (root / f"m{i:03d}.py").write_text(f'"""Solver {i}: 稀土萃取分离 process."""\n')
    cfg = _config(tmp_path)
    first = cli("scan", "--json", str(root), config=cfg, timeout=180).stdout
    kept = tmp_path / "state" / CACHE_NAME
    assert kept.stat().st_mode & 0o777 == 0o600
    written = kept.stat().st_mtime_ns
    for f in (tmp_path / "state").glob("hashcache.db*"):  # classified again, kept policy
        f.unlink()
    again = cli("scan", "--json", str(root), config=cfg, timeout=180).stdout
    assert again == first and "CN-CAT-RE-REFINING" in again
    assert kept.stat().st_mtime_ns == written  # read, not written again


def test_an_invalid_policy_is_said_once_and_scan_goes_on(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("pack: [unclosed\n")
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(PARALLEL_FROM + 5):
        (root / f"m{i:03d}.py").write_text(f'"""Solver {i}: 稀土萃取分离 process."""\n')
    res = cli("scan", "--json", str(root), config=_config(tmp_path, paths=[str(bad)]))
    assert res.stderr.count("the configured policy is invalid") == 1
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(docs) == PARALLEL_FROM + 5
    assert all(d["kinds"] == ["source_code"] and d["matches"] == [] for d in docs)


def test_a_hash_cache_that_cannot_be_made_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache's directory would be\n")
    cfg = write_config(
        tmp_path / "agent.yaml",
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "classify": {"use_magika": False, "hash_cache": str(blocker / "hc.db")},
        },
    )
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(PARALLEL_FROM + 5):  # the many-file path (a forked policy child)
        (root / f"m{i:03d}.py").write_text(f"x = {i}\n")
    for target in (root, root / "m001.py"):
        res = cli("scan", "--json", str(target), config=cfg, check=False)
        assert res.returncode == 2, res.stderr
        assert res.stdout == ""
        assert f"classify.hash_cache {blocker / 'hc.db'}: cannot open" in res.stderr
        assert "Traceback" not in res.stderr
