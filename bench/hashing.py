"""The classifier's done-when measurements: hashing speed, the cache, and small-file rate.

1. A 2 GB file (random blocks, in the page cache): `egress-agent scan` (fresh hash cache,
   magika on, as shipped) against `openssl dgst -sha256` on the same file. Goal ≤ 1.1×.
2. The same scan again with the cache kept: it must not re-hash (time against the first).
3. A tree of 10,000 small source files: files per second for `egress-agent scan --json`
   (fresh cache), with `openssl dgst -sha256` over the same files as the reference.
   Goal ≥ 10,000 files/s on 2 cores (issue 15).
4. The mixed real tree: the regression corpus of real files from public packages
   (tests/classify/realcorpus.py, cached in ~/.cache/egress-agent/corpus; model weights,
   datasets, documents, archives, source, ~290 files) in the page cache: files per second
   for `scan --json` with a fresh hash cache and again with the cache kept, openssl over
   the same files as the reference. Goal ≥ 100 files/s. Skipped, with the reason, when
   the corpus cannot be fetched.

Each timing is the best of `--repeat` runs, wall clock, whole command (interpreter
start-up included). Prints one JSON object on the last line of stdout.

    .venv/bin/python -m bench.hashing [--size-gib 2] [--files 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BLOCK = 64 << 20


def make_big(path: Path, size: int) -> None:
    block = os.urandom(BLOCK)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(BLOCK, size - written)
            f.write(block[:n])
            written += n
            block = block[1:] + block[:1]  # no two blocks alike
    with open(path, "rb") as f:  # into the page cache, for both tools alike
        while f.read(BLOCK):
            pass


def make_tree(root: Path, files: int) -> None:
    per_dir = 100
    for i in range(files):
        d = root / f"pkg{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(
            f'"""Module {i}."""\n# solver step {i}: pressure and temperature\n\n'
            f"def f{i}(x: int) -> int:\n    return x * {i} + 1\n" * 8
        )


def config(work: Path, name: str, hash_cache: Path | None = None) -> Path:
    """A config with its own state dir, or with `hash_cache` that of `name`'s state dir
    (the compiled policy kept there) and its own hash cache."""
    state = work / f"state-{name}"
    cfg = work / (f"{name}.yaml" if hash_cache is None else f"{hash_cache.stem}.yaml")
    doc: dict[str, Any] = {"agent": {"state_dir": str(state)}}
    if hash_cache is not None:
        doc["classify"] = {"hash_cache": str(hash_cache)}
    cfg.write_text(json.dumps(doc))
    return cfg


# an installed agent has its modules compiled (pip writes the .pyc files): a
# PYTHONDONTWRITEBYTECODE in this shell must not make every scan compile them (as in
# bench/idle.py); the first scan of a run writes them, and each figure is a best of runs
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], stdout: Any = subprocess.DEVNULL) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout, stderr=subprocess.PIPE, cwd=REPO, env=ENV)
    return time.perf_counter() - t0


def scan_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "--config", str(cfg), "scan", "--json", *args]


def best(runs: list[float]) -> float:
    return min(runs)


def files_per_second_row(
    what: str, files: int, agent_s: float, ref_s: float, goal: int, note: str
) -> dict[str, Any]:
    """A comparison row in files per second: the agent's and openssl's rate over `files`."""
    return {
        "what": what,
        "agent": round(files / agent_s, 1),
        "reference": round(files / ref_s, 1),
        "unit": "files/s",
        "ratio": round(ref_s / agent_s, 3),
        "goal": f"≥ {goal:,}",
        "met": files / agent_s >= goal,
        "note": note,
    }


def seconds_against_openssl_row(
    what: str, agent_s: float, openssl_s: float, note: str
) -> dict[str, Any]:
    """A comparison row in seconds against openssl's time on the same file; goal ≤ 1.1x."""
    return {
        "what": what,
        "agent": round(agent_s, 3),
        "reference": round(openssl_s, 3),
        "unit": "s",
        "ratio": round(agent_s / openssl_s, 3),
        "goal": "≤ 1.1",
        "met": agent_s / openssl_s <= 1.1,
        "note": note,
    }


def openssl_files(paths: list[str], repeat: int) -> float:
    """Best wall time of `openssl dgst -sha256` over `paths` (2,000 per command line)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for j in range(0, len(paths), 2000):
            subprocess.run(
                ["openssl", "dgst", "-sha256", *paths[j : j + 2000]],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        runs.append(time.perf_counter() - t0)
    return best(runs)


def mixed_tree(work: Path, repeat: int) -> list[dict[str, Any]]:
    """Rows for the real corpus (fresh cache, then cache kept), or one row saying why not."""
    what = "scan of the mixed real tree (regression corpus)"
    try:
        sys.path.insert(0, str(REPO))
        from tests.classify import realcorpus

        realcorpus.prepare()
    except Exception as e:  # FetchUnavailable, or no tests directory in this install
        return [{"what": what, "agent": None, "reference": None, "unit": "files/s",
                 "ratio": None, "goal": "≥ 100", "met": None,
                 "note": f"skipped: corpus unavailable ({type(e).__name__}: {e})"}]  # fmt: skip
    from agent.cli.scan import walk

    root = realcorpus.DEFAULT_CACHE / "files"
    files = [p for p in walk([str(root)], ()) if os.path.isfile(p)]
    size = sum(os.path.getsize(p) for p in files)
    for p in files:  # into the page cache, for both tools alike
        with open(p, "rb") as f:
            while f.read(BLOCK):
                pass
    fresh = best([timed(scan_cmd(config(work, f"mixed{i}"), str(root))) for i in range(repeat)])
    kept = best([timed(scan_cmd(config(work, "mixed0"), str(root))) for _ in range(repeat)])
    ref = openssl_files(files, repeat)
    n = len(files)
    tree = f"{n} files, {size / 1e6:.0f} MB"
    note = "reference: openssl dgst -sha256 on the same files (hash only, no classification)"
    return [
        files_per_second_row(
            f"{what}, {tree}, fresh hash cache",
            n,
            fresh,
            ref,
            100,
            "files in the page cache; whole command incl. start-up; " + note,
        ),
        files_per_second_row(
            f"{what}, {tree}, second scan (hash cache kept)", n, kept, ref, 100, note
        ),
    ]


def in_process(path: Path, work: Path, name: str) -> float:
    """classify_path in this process with a fresh cache: the hashing path without start-up."""
    from agent.classify import Classifier
    from agent.classify.hashing import HashCache
    from agent.config import ClassifySection

    cache = HashCache(work / f"{name}.db")
    clf = Classifier(ClassifySection(), cache=cache)
    t0 = time.perf_counter()
    clf.classify_path(str(path))
    elapsed = time.perf_counter() - t0
    clf.close()
    cache.close()
    return elapsed


def big_file(work: Path, size_gib: float, repeat: int) -> dict[str, Any]:
    """Rows 1 and 2: one big file, first scan and cache hit, and the in-process hash."""
    big = work / "big.bin"
    size = int(size_gib * (1 << 30))
    make_big(big, size)
    openssl = best([timed(["openssl", "dgst", "-sha256", str(big)]) for _ in range(repeat)])
    first_runs = []
    for i in range(repeat):
        cfg = config(work, f"first{i}")  # a fresh state dir: nothing cached
        first_runs.append(timed(scan_cmd(cfg, str(big))))
    first = best(first_runs)
    inproc = best([in_process(big, work, f"inproc{i}") for i in range(repeat)])
    cached = best([timed(scan_cmd(config(work, "first0"), str(big))) for _ in range(repeat)])
    out = subprocess.run(
        scan_cmd(config(work, "first0"), str(big)), capture_output=True, text=True, cwd=REPO
    ).stdout
    got = json.loads(out.splitlines()[0])["sha256"]
    want = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r", str(big)], capture_output=True, text=True
    ).stdout.split()[0]
    big.unlink()
    gb = size / 1e9
    return {
        "file_bytes": size,
        "sha256_matches_openssl": got == want,
        "scan_first_seconds": round(first, 3),
        "scan_second_seconds": round(cached, 3),
        "classify_in_process_seconds": round(inproc, 3),
        "openssl_seconds": round(openssl, 3),
        "scan_gb_per_s": round(gb / first, 2),
        "openssl_gb_per_s": round(gb / openssl, 2),
        "comparisons": [
            seconds_against_openssl_row(
                f"scan of a {size_gib:g} GB file (fresh cache) vs openssl dgst -sha256",
                first,
                openssl,
                "whole command incl. start-up; hash identical" if got == want else "HASH MISMATCH",
            ),
            seconds_against_openssl_row(
                f"classify_path of the {size_gib:g} GB file in process vs openssl",
                inproc,
                openssl,
                "the hashing path without interpreter and CLI start-up",
            ),
            {
                "what": "second scan of the same file (hash cache hit)",
                "agent": round(cached, 3),
                "reference": round(first, 3),
                "unit": "s",
                "ratio": round(cached / first, 3),
                "goal": "no re-hash",
                "met": cached < openssl / 2,
                "note": "reference is the first scan; a re-hash would cost about the openssl time",
            },
        ],
    }


def small_files(work: Path, files: int, repeat: int) -> dict[str, Any]:
    """Row 3: a tree of small source files, files per second."""
    tree = work / "tree"
    make_tree(tree, files)
    paths = sorted(str(p) for p in tree.rglob("*.py"))
    # one untimed scan writes the .pyc files, reads the files once and leaves the compiled
    # policy in its state dir (agent/policy/cache.py), as on a host where the agent runs;
    # each timed scan then starts with a fresh hash cache of its own
    timed(scan_cmd(config(work, "tree"), str(tree)))
    tree_s = best(
        [
            timed(scan_cmd(config(work, "tree", work / f"hc-tree{i}.db"), str(tree)))
            for i in range(repeat)
        ]
    )
    ref_s = openssl_files(paths, repeat)
    shutil.rmtree(tree)
    return {
        "tree_files": files,
        "tree_scan_seconds": round(tree_s, 3),
        "tree_openssl_seconds": round(ref_s, 3),
        "comparisons": [
            files_per_second_row(
                f"scan of {files:,} small source files",
                files,
                tree_s,
                ref_s,
                10_000,
                f"{os.cpu_count()} cores; fresh hash cache, compiled policy kept in the "
                "state dir; whole command incl. start-up; reference: openssl dgst -sha256 "
                "on the same files (hash only, no classification)",
            )
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--only-trees", action="store_true", help="skip the big-file rows")
    a = ap.parse_args()
    if shutil.which("openssl") is None:
        print(json.dumps({"error": "openssl not installed"}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-hashing-", dir=a.dir))
    result: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    comparisons: list[dict[str, Any]] = []
    try:
        for part in (
            None if a.only_trees else big_file(work, a.size_gib, a.repeat),
            small_files(work, a.files, a.repeat),
        ):
            if part is not None:
                comparisons += part.pop("comparisons")
                result.update(part)
        comparisons += mixed_tree(work, a.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    result["comparisons"] = comparisons
    print(json.dumps(result))


if __name__ == "__main__":
    main()
