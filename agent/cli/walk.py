"""The paths `egress-agent scan` classifies: a depth-first walk that never follows a link.

Directory entries carry their type from `scandir` (`d_type`), so only the paths named on
the command line and the directories themselves are `lstat`ed; `files.exclude` globs are
matched against each absolute path by the file sensor's own matcher (`agent.globs`), so
`scan` skips what the daemon skips; kernel pseudo-file systems are never entered; a
TensorFlow SavedModel directory is listed as one more path beside its files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence

from agent.globs import compile_excludes

__all__ = ["walk"]


_PSEUDO = ("/proc/", "/sys/")


def walk(paths: Sequence[str], exclude: Sequence[str]) -> Iterator[str]:
    """Every path under `paths`, depth first, never following a symlink.

    A directory's entries carry their type (`d_type`) from `scandir`, so only the named
    paths and the directories themselves are `lstat`ed; the exclude globs are the file
    sensor's matcher (`agent.globs`), tried on each absolute path.
    """
    excluded = compile_excludes(exclude)
    for top in paths:
        stack: list[tuple[str, str, bool | None]] = [(top, os.path.abspath(top), None)]
        while stack:
            p, full, is_dir = stack.pop()
            if full.startswith(_PSEUDO) or full in ("/proc", "/sys"):
                continue  # kernel pseudo-files: /proc/kcore claims 128 TB
            if excluded(full):
                continue
            if is_dir is None:
                try:
                    is_dir = stat.S_ISDIR(os.lstat(p).st_mode)
                except OSError:
                    yield p
                    continue
            if not is_dir:
                yield p
                continue
            if os.path.isfile(os.path.join(p, "saved_model.pb")):
                yield p  # a SavedModel is one artefact, and its files are still listed
            try:
                with os.scandir(p) as it:
                    entries = sorted((e.name, _is_dir(e)) for e in it)
            except OSError:
                yield p
                continue
            # os.path.join's result, without its two calls a file (a tenth of the walk)
            ps = p if p.endswith("/") else p + "/"
            fs = full if full.endswith("/") else full + "/"
            stack.extend((ps + n, fs + n, d) for n, d in reversed(entries))


def _is_dir(entry: os.DirEntry[str]) -> bool | None:
    """The entry's type from the directory listing, or None (ask `lstat` later)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return None
