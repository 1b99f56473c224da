"""`egress-agent scan PATH...`: classify files now, without a running daemon.

Directories are walked recursively (symlinks are reported, never followed; the
`files.exclude` globs apply), files are classified with the same persistent hash cache
the daemon uses (so a second scan re-reads nothing) — on `classify.workers` forked
processes when there are many (`agent.classify.parallel`), on threads here when there
are a few — and results come out in walk order: a table for people, one JSON object
per file with `--json`. A rich progress bar is drawn on stderr when it is a terminal.
`--store` also records each file as a `scanned` event in the configured store (an
inventory).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli._common import UserError, settings_from
from agent.cli.walk import walk
from agent.textsafe import shown

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.events import Artefact
    from agent.fingerprint import HashAhead


# json.dumps(doc, ensure_ascii=False, default=str) built once: dumps makes a new encoder
# on every call that passes options, a few µs of each file's line
_encode_doc = json.JSONEncoder(ensure_ascii=False, default=str).encode


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
    # As in `run`: the imports and config make some 100,000 objects that live as long as
    # the process; the cyclic collector is off while they are made and then leaves them
    # out of every later collection (gc.freeze), in the workers forked after it too, and
    # at exit (where its last collections took 25 ms of a 1 s scan)
    gc.disable()
    try:
        s, todo, parallel, cats, cache_path = _prepare(ctx, paths, no_cache)
        if parallel:
            from agent.classify.parallel import safe_to_fork

            categories = cats()
            parallel = safe_to_fork()  # a big file named on the command line is still hashing
    finally:
        gc.freeze()
        gc.enable()
    render = partial(_render, as_json, to_store)
    if parallel:
        results = _in_processes(s, cache_path, categories, render, todo, as_json)
    else:
        results = _in_threads(s, cache_path, cats, ahead, render, todo)
    recorder = _Recorder(s) if to_store else None
    progress = _progress() if sys.stderr.isatty() else None
    count = 0
    out = sys.stdout
    try:
        # what is ready together is written together: one write a worker's chunk, not a
        # line (stdout is unbuffered under PYTHONUNBUFFERED: 10,000 lines, 10,000 writes)
        for batch in results:
            lines = []
            for path, (line, artefact, *_) in batch:
                if recorder is not None and artefact is not None:
                    recorder.add(path, artefact)
                lines.append(line)
            count += len(lines)
            if as_json:
                out.write("".join(lines))
            else:
                click.echo("\n".join(lines))
            if progress is not None:
                progress.update(count)
    finally:
        results.close()
        if progress is not None:
            progress.close()
        if recorder is not None:
            recorder.close()


def _prepare(
    ctx: click.Context, paths: tuple[str, ...], no_cache: bool
) -> tuple[Settings, Iterator[str], bool, Callable[[], Sequence[Any]], Path | None]:
    """Settings, the walk, whether it is worth forking workers, the categories (to wait
    for) and the hash cache's path, with the classifier imported."""
    from agent.cli import scan_policy

    s = settings_from(ctx)
    walked = walk(paths, s.files.exclude)
    first = list(itertools.islice(walked, PARALLEL_FROM))
    todo = itertools.chain(first, walked)
    parallel = len(first) >= PARALLEL_FROM and s.classify.workers > 1
    # the policy packs load while the classifier is imported (and, when there are few
    # files, while the first ones are hashed): in a forked child when workers will be
    # forked anyway (the two take turns on a thread: both hold the GIL)
    if parallel and scan_policy.safe_to_fork():
        cats = scan_policy.in_child(s)
    else:
        cats = scan_policy.on_thread(s)
    cache_path = None if no_cache else s.classify.hash_cache or s.state_dir / "hashcache.db"
    # the hash cache is opened (a new one made: eight fsyncs, 25-40 ms of waiting) on
    # a thread while this one imports the classifier
    opener = ThreadPoolExecutor(1, "scan-cache")
    opened = opener.submit(_open_cache, cache_path)
    try:
        import agent.classify.classifier  # noqa: F401 - 0.1 s, before anything is forked
    finally:
        error = opened.exception()
        opener.shutdown(wait=True)  # its thread is gone: the caller may fork
    if error is not None:
        raise UserError(f"classify.hash_cache {cache_path}: cannot open: {error}")
    return s, todo, parallel, cats, cache_path


def _open_cache(path: Path | None) -> None:
    """Fails, for one clear line, if the hash cache cannot be opened (or made)."""
    from agent.classify.hashing import HashCache

    if path is not None:
        HashCache(path).close()


PARALLEL_FROM = 128  # files: fewer are classified in this process (no fork for a handful)
# the line, the artefact (`--store` only), the content and file it came from, its parents
Rendered = tuple[str, "Artefact | None", "str | None", "tuple[int, int] | None", tuple[str, ...]]


def _render(
    as_json: bool, keep: bool, path: str, a: Artefact, ident: tuple[int, int] | None
) -> Rendered:
    """The output line of one file (made where it was classified), and the artefact
    itself only when the parent records it (`--store`)."""
    line = _encode_doc(artefact_doc(path, a)) + "\n" if as_json else _row(path, a)
    return line, a if keep else None, a.sha256, ident if a.sha256 else None, a.parents


def _in_processes(
    s: Settings,
    cache_path: Path | None,
    cats: Sequence[Any],
    render: Callable[[str, Artefact, tuple[int, int] | None], Rendered],
    paths: Iterator[str],
    as_json: bool,
) -> Generator[list[tuple[str, Rendered]], None, None]:
    """Many files: one forked worker process per `classify.workers` (every core), with
    `parents` made what one process in walk order would say. The workers are forked
    here, at once, before the caller starts the progress bar's thread or opens a store."""
    from agent.classify.parallel import ProcessClassifier

    pool = ProcessClassifier(s.classify, cache_path, cats, render, s.classify.workers)
    return _from_processes(pool, paths, cache_path, as_json)


def _from_processes(
    pool: Any, paths: Iterator[str], cache_path: Path | None, as_json: bool
) -> Generator[list[tuple[str, Rendered]], None, None]:
    """The workers' results a chunk at a time, in walk order."""
    from agent.classify.parallel import WalkOrderLineage, record_origins

    lineage = WalkOrderLineage()
    try:
        for chunk in pool.chunks(paths):
            batch = []
            for path, (line, a, sha, ident, got) in chunk:
                want = lineage.parents(sha, ident, got)
                if want != got:
                    if a is not None:
                        a = replace(a, parents=want)
                    if as_json:
                        doc = json.loads(line)
                        doc["parents"] = list(want)
                        line = _encode_doc(doc) + "\n"
                batch.append((path, (line, a, sha, ident, want)))
            yield batch
    finally:
        pool.close()
    if cache_path is not None:
        record_origins(cache_path, lineage.origins())


def _in_threads(
    s: Settings,
    cache_path: Path | None,
    cats: Callable[[], Sequence[Any]],
    ahead: HashAhead,
    render: Callable[[str, Artefact, tuple[int, int] | None], Rendered],
    paths: Iterator[str],
) -> Generator[list[tuple[str, Rendered]], None, None]:
    """A few files, or one worker: threads in this process, in input order with a
    bounded window (a big file's hash runs beside its parsers, GIL released); each
    file's line is written as soon as it is ready."""
    from agent.classify.classifier import Classifier
    from agent.classify.hashing import HashCache

    cache = HashCache(cache_path) if cache_path is not None else None
    classifier = Classifier(s.classify, cache=cache, categories=cats, ahead=ahead)
    window: deque[tuple[str, Future[Rendered]]] = deque()
    limit = s.classify.workers * 4

    def one(path: str) -> Rendered:
        return render(path, classifier.classify_path(path), None)

    try:
        with ThreadPoolExecutor(s.classify.workers, "scan") as pool:
            for path in paths:
                window.append((path, pool.submit(one, path)))
                if len(window) >= limit:
                    p, fut = window.popleft()
                    yield [(p, fut.result())]
            while window:
                p, fut = window.popleft()
                yield [(p, fut.result())]
    finally:
        for _p, fut in window:
            fut.cancel()
        classifier.close()
        if cache is not None:
            cache.close()


def _row(path: str, a: Artefact) -> str:
    if a.skipped and not a.tags:
        return f"{shown_path(path)}\tskipped: {a.skipped}"
    summary = "; ".join(f"{t.kind}: {t.evidence}" for t in a.tags) or a.content_type
    if a.matches:
        summary += " | categories: " + ", ".join(
            f"{m.category}×{m.count} ({m.confidence})" for m in a.matches
        )
    if a.skipped:
        at = f" at {a.skipped_at}" if a.skipped_at else ""
        summary += f" (partial: {a.skipped}{at})"
    return f"{shown_path(path)}\t{shown(summary)}"


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
