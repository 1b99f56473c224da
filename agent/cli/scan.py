"""`egress-agent scan PATH...`: classify files now, without a running daemon.

Directories are walked recursively (symlinks are reported, never followed; the
`files.exclude` globs apply), files are classified on `classify.workers` threads with
the same persistent hash cache the daemon uses (so a second scan re-reads nothing),
and results come out in walk order: a table for people, one JSON object per file with
`--json`. A rich progress bar is drawn on stderr when it is a terminal. `--store` also
records each file as a `scanned` event in the configured store (an inventory).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import click

from agent.cli._common import UserError, print_json, settings_from
from agent.textsafe import shown

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.events import Artefact
    from agent.fingerprint import HashAhead


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


_PSEUDO = ("/proc/", "/sys/")


def walk(paths: Sequence[str], exclude: Sequence[str]) -> Iterator[str]:
    """Every path under `paths`, depth first, never following a symlink."""
    rx = [_glob_regex(p) for p in exclude]
    # a directory matches "**/x/**" when "dir/" does
    excluded = lambda p: any(r.match(p) or r.match(p + "/") for r in rx)  # noqa: E731
    for top in paths:
        stack = [top]
        while stack:
            p = stack.pop()
            full = os.path.abspath(p)
            if excluded(full) or full.startswith(_PSEUDO) or full in ("/proc", "/sys"):
                continue  # kernel pseudo-files: /proc/kcore claims 128 TB
            try:
                st = os.lstat(p)
            except OSError:
                yield p
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield p
                continue
            if os.path.isfile(os.path.join(p, "saved_model.pb")):
                yield p  # a SavedModel is one artefact, and its files are still listed
            try:
                with os.scandir(p) as it:
                    names = sorted(e.name for e in it)
            except OSError:
                yield p
                continue
            stack.extend(os.path.join(p, n) for n in reversed(names))


def printable(path: str) -> str:
    """A path as text: non-UTF-8 bytes as \\x escapes, never an encoding error."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def shown_path(path: str) -> str:
    """A path for a terminal line: also no newlines, ESC sequences or bidi overrides."""
    return shown(printable(path))


def artefact_doc(path: str, a: Artefact) -> dict[str, Any]:
    return {
        "path": printable(path),
        "sha256": a.sha256,
        "size": a.size,
        "content_type": a.content_type,
        "kinds": list(a.kinds),
        "tags": [{"kind": t.kind, "evidence": t.evidence, "details": t.details} for t in a.tags],
        "matches": [
            {
                "category": m.category,
                "count": m.count,
                "pack": m.pack,
                "distinct": m.distinct,
                "confidence": m.confidence,
                "basis": m.basis,
            }
            for m in a.matches
        ],
        "parents": list(a.parents),
        "skipped": a.skipped,
        "skipped_at": a.skipped_at,
    }


def _categories(s: Settings) -> tuple[Any, ...]:
    try:
        from agent.policy.holder import load_configured
    except ImportError:
        return ()
    policy, issues = load_configured(s.policies)
    if policy is None:
        click.echo(
            f"warning: the configured policy is invalid ({len(issues)} problem(s)); "
            "classifying without categories",
            err=True,
        )
        return ()
    return tuple(policy.categories)


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--no-cache", is_flag=True, help="Do not read or update the hash cache.")
@click.option("--store", "to_store", is_flag=True, help="Also record scanned events in the store.")
@click.pass_context
def scan(
    ctx: click.Context, paths: tuple[str, ...], as_json: bool, no_cache: bool, to_store: bool
) -> None:
    """Classify PATH... now (directories recursively) and print what each file is."""
    from agent.fingerprint import BIG_FILE, HashAhead

    for p in paths:
        if not os.path.lexists(p):
            raise UserError(f"{p}: no such file or directory")
    # big files named here start hashing now, during the 0.2 s of imports and config
    # below; the classifier stops each one the hash cache turns out to know
    ahead = HashAhead(paths, BIG_FILE)
    try:
        _scan(ctx, paths, as_json, no_cache, to_store, ahead)
    finally:
        ahead.close()


def _scan(
    ctx: click.Context,
    paths: tuple[str, ...],
    as_json: bool,
    no_cache: bool,
    to_store: bool,
    ahead: HashAhead,
) -> None:
    from agent.classify.classifier import Classifier
    from agent.classify.hashing import HashCache

    s = settings_from(ctx)
    # the policy packs load on another thread while the first files are hashed
    loader = ThreadPoolExecutor(1, "scan-policy")
    cats_future = loader.submit(_categories, s)
    loader.shutdown(wait=False)
    cache = None
    if not no_cache:
        cache_path = s.classify.hash_cache or s.state_dir / "hashcache.db"
        try:
            cache = HashCache(cache_path)
        except Exception as e:
            raise UserError(f"classify.hash_cache {cache_path}: cannot open: {e}") from None
    classifier = Classifier(s.classify, cache=cache, categories=cats_future.result, ahead=ahead)
    recorder = _Recorder(s) if to_store else None
    progress = _progress() if sys.stderr.isatty() else None
    count = 0
    try:
        for path, artefact in _classify_all(classifier, walk(paths, s.files.exclude), s):
            count += 1
            if recorder is not None:
                recorder.add(path, artefact)
            if as_json:
                print_json(artefact_doc(path, artefact))
            else:
                _print_row(path, artefact)
            if progress is not None:
                progress.update(count)
    finally:
        if progress is not None:
            progress.close()
        classifier.close()
        if cache is not None:
            cache.close()
        if recorder is not None:
            recorder.close()


def _classify_all(
    classifier: Any, paths: Iterator[str], s: Settings
) -> Iterator[tuple[str, Artefact]]:
    """Classify on a thread pool, yielding in input order with a bounded window."""
    window: deque[tuple[str, Future[Artefact]]] = deque()
    limit = s.classify.workers * 4
    with ThreadPoolExecutor(s.classify.workers, "scan") as pool:
        for path in paths:
            window.append((path, pool.submit(classifier.classify_path, path)))
            if len(window) >= limit:
                p, fut = window.popleft()
                yield p, fut.result()
        while window:
            p, fut = window.popleft()
            yield p, fut.result()


def _print_row(path: str, a: Artefact) -> None:
    if a.skipped and not a.tags:
        click.echo(f"{shown_path(path)}\tskipped: {a.skipped}")
        return
    summary = "; ".join(f"{t.kind}: {t.evidence}" for t in a.tags) or a.content_type
    if a.matches:
        summary += " | categories: " + ", ".join(
            f"{m.category}×{m.count} ({m.confidence})" for m in a.matches
        )
    if a.skipped:
        at = f" at {a.skipped_at}" if a.skipped_at else ""
        summary += f" (partial: {a.skipped}{at})"
    click.echo(f"{shown_path(path)}\t{shown(summary)}")


class _Progress:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._p = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed} files classified"),
            TimeElapsedColumn(),
            transient=True,
            console=Console(stderr=True),
        )
        self._p.start()
        self._task = self._p.add_task("scan", total=None)

    def update(self, n: int) -> None:
        self._p.update(self._task, completed=n)

    def close(self) -> None:
        self._p.stop()


def _progress() -> _Progress:
    return _Progress()


class _Recorder:
    """Writes `scanned` file events to the store in batches (`--store`)."""

    def __init__(self, s: Settings) -> None:
        from agent.cli._common import open_store
        from agent.store.db import host_identity, register_host

        self.engine = open_store(s, upgrade=s.database.auto_upgrade)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.host_id, hostname = host_identity(s.state_dir, s.agent.host_id, s.agent.hostname)
        register_host(self.engine, self.host_id, hostname)
        self.batch: list[Any] = []

    def add(self, path: str, a: Artefact) -> None:
        from agent.events import FileAction, FileEvent, Origin

        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        ev = FileEvent(
            FileAction.SCANNED,
            path,
            size=a.size,
            inode=st.st_ino if st else None,
            device=st.st_dev if st else None,
            mtime_ns=st.st_mtime_ns if st else None,
            origin=Origin.SCAN,
            sensor="scan",
            artefact=a,
        )
        self.batch.append(ev)
        if len(self.batch) >= 500:
            self.flush()

    def flush(self) -> None:
        from agent.store.writer import write_batch

        if self.batch:
            write_batch(self.engine, self.host_id, self.batch)
            self.batch = []

    def close(self) -> None:
        self.flush()
        self.engine.dispose()
