"""The categories `scan` classifies with: the policy packs, loaded beside the classifier's import.

Reading and compiling the packs (`agent.policy.build`: YAML, the pydantic pack models,
rule compilation and rule tests) and importing the classifier are each about 0.1 s of
CPU at `scan`'s start, and both hold the GIL: on a thread they simply take turns. So
when `scan` is about to fork its workers anyway, the packs are read in a forked child
process on the other core while this process imports the classifier, and the compiled
categories come back through a pipe (a few ms to pickle and read). Anything that goes
wrong in the child — a crash, an import error, a broken pipe — only means the packs
are read here after all, as before. A handful of files (no fork) keeps the thread.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from agent.config import Settings

Categories = tuple[Any, ...]


def categories(s: Settings) -> Categories:
    """The categories of the configured packs; () without the policy code or when the
    configured policy is invalid (said once on stderr).

    The compiled policy the daemon keeps in the state directory (agent/policy/cache.py:
    the same files, parameters and code, a file only this user can write) is taken
    from there, 60-90 ms less than reading the packs; one read here is kept there."""
    # through agent.policy.cache, not the holder: that one imports SQLAlchemy for the
    # daemon's store of policy versions (0.15 s of a scan's start-up)
    try:
        from agent.policy.cache import load_configured
    except ImportError:
        return ()
    policy, issues = load_configured(s.policies, cache_dir=_state_dir(s))
    if policy is None:
        click.echo(
            f"warning: the configured policy is invalid ({len(issues)} problem(s)); "
            "classifying without categories",
            err=True,
        )
        return ()
    return tuple(policy.categories)


def _state_dir(s: Settings) -> Path | None:
    """The state directory, made if need be (the hash cache is made in it too); None
    when it cannot be: the packs are then read, and the policy not kept."""
    try:
        s.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return s.state_dir


def safe_to_fork() -> bool:
    """Only this thread runs (`agent.classify.parallel.safe_to_fork`, which cannot be
    imported before the classifier it is to overlap: its package imports that)."""
    return threading.active_count() == 1


def _child(s: Settings, conn: Connection) -> None:
    try:
        conn.send(("ok", categories(s)))
    except Exception as e:  # the parent reads the packs itself
        conn.send(("failed", repr(e)))
    finally:
        conn.close()


def in_child(s: Settings) -> Callable[[], Categories]:
    """Start reading the packs in a forked child now; the returned call waits for them.

    Only while this process runs no other thread (the caller checks): a fork copies no
    thread, and a lock another thread held would stay held in the child."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(s, send), name="scan-policy", daemon=True)
    proc.start()
    send.close()

    def result() -> Categories:
        try:
            status, value = recv.recv()
        except (EOFError, OSError):  # the child died before it answered
            status, value = "failed", None
        finally:
            recv.close()
            proc.join()
        return value if status == "ok" else categories(s)

    return _once(result)


def on_thread(s: Settings) -> Callable[[], Categories]:
    """Start reading the packs on a thread now; the returned call waits for them (and
    for the thread's end: the caller may fork next)."""
    loader = ThreadPoolExecutor(1, "scan-policy")
    future = loader.submit(categories, s)

    def result() -> Categories:
        cats = future.result()
        loader.shutdown(wait=True)
        return cats

    return _once(result)


def _once(fn: Callable[[], Categories]) -> Callable[[], Categories]:
    """`fn()` the first time, its result after (the classifier asks for every file)."""
    box: list[Categories] = []

    def get() -> Categories:
        if not box:
            box.append(fn())
        return box[0]

    return get
