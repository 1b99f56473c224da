"""The paths `egress-agent scan` classifies: a depth-first walk that never follows a link.

Directory entries carry their type from `scandir` (`d_type`), so only the paths named on
the command line and the directories themselves are `lstat`ed; `files.exclude` globs are
matched, as one alternation, against each absolute path; kernel pseudo-file systems are
never entered; a TensorFlow SavedModel directory is listed as one more path beside its
files.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence

__all__ = ["walk"]


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
    """Every path under `paths`, depth first, never following a symlink.

    A directory's entries carry their type (`d_type`) from `scandir`, so only the named
    paths and the directories themselves are `lstat`ed; the exclude globs are one
    alternation, matched against the absolute path (and with a trailing slash, so that
    a directory matches "**/x/**").
    """
    rx = _exclusion(exclude)
    for top in paths:
        stack: list[tuple[str, str, bool | None]] = [(top, os.path.abspath(top), None)]
        while stack:
            p, full, is_dir = stack.pop()
            if full.startswith(_PSEUDO) or full in ("/proc", "/sys"):
                continue  # kernel pseudo-files: /proc/kcore claims 128 TB
            if rx is not None and (rx.match(full) or rx.match(full + "/")):
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
            stack.extend(
                (os.path.join(p, n), os.path.join(full, n), d) for n, d in reversed(entries)
            )


def _is_dir(entry: os.DirEntry[str]) -> bool | None:
    """The entry's type from the directory listing, or None (ask `lstat` later)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return None


def _exclusion(exclude: Sequence[str]) -> re.Pattern[str] | None:
    if not exclude:
        return None
    return re.compile("|".join(f"(?:{_glob_regex(p).pattern})" for p in exclude))
