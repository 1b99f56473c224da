"""Code comments: the comments and docstrings of a source text, for keyword matching.

What engineers write about code is in its comments and docstrings, so the text tier
gives the keyword matcher those rather than the code itself. The extraction is pure and
bounded: line comments are found a slab at a time, block comments in one linear pass
(a regex took hours on 4 MB of unclosed `/*`). Kept apart from `source`, which names
the language and the git repository.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator

_HASH_COMMENT = {"python", "cython", "shell", "ruby", "perl", "r", "julia", "cmake", "make"}
_HASH_COMMENT |= {"tcl", "dockerfile", "elixir", "powershell"}
_DASH_COMMENT = {"sql", "lua", "ada", "haskell", "vhdl"}
_C_BLOCK = (("/*", "*/"),)
_PY_DOC = (('"""', '"""'), ("'''", "'''"))


def _line_marker(language: str) -> str:
    if language in _HASH_COMMENT:
        return "#"
    if language in _DASH_COMMENT:
        return "--"
    if language in ("matlab", "erlang"):
        return "%"
    if language in ("assembly", "clojure"):
        return ";"
    return "//"


def comments(text: str, language: str, limit: int) -> str:
    """The comments (and docstrings) of a source text, at most `limit` characters."""
    text = text[:limit]
    marker = _line_marker(language)
    block = _PY_DOC if language in ("python", "cython") else _C_BLOCK if marker == "//" else None
    # written as found, not listed: a million two-character comments are 60 MB as strings
    out = io.StringIO()
    sep = ""
    pieces = _line_comments(text, marker)
    for part in itertools.chain(pieces, _blocks(text, block) if block is not None else ()):
        out.write(sep)
        out.write(part)
        sep = "\n"
        if out.tell() > limit:
            break
    return out.getvalue()[:limit]


_LINE_RX: dict[str, re.Pattern[str]] = {}
_SLAB = 1 << 16  # characters of text whose line comments are listed at once


def _line_comments(text: str, marker: str) -> Iterator[str]:
    """The line comments of `text` joined by newlines, a slab of about 64 KiB at a time
    (one `findall` per slab: bounded lists, C speed).

    A slab ends after a newline that does not follow the marker itself: `\\s?` after a
    marker may take that newline and the comment then runs on into the next line, and
    such a match must not be cut in two.
    """
    rx = _LINE_RX.get(marker)
    if rx is None:
        rx = _LINE_RX[marker] = re.compile(re.escape(marker) + r"\s?(.*)$", re.M)
    pos = 0
    n = len(text)
    while pos < n:
        j = text.find("\n", pos + _SLAB)
        while j >= 0 and text.endswith(marker, 0, j):
            j = text.find("\n", j + 1)
        end = n if j < 0 else j + 1
        parts = rx.findall(text, pos, end)
        if parts:
            yield "\n".join(parts)
        pos = end


def _blocks(text: str, delims: tuple[tuple[str, str], ...]) -> Iterator[str]:
    """The bodies of delimited blocks, left to right, in one linear pass.

    What `re.finditer(r"/\\*(.*?)\\*/", re.S)` finds, without its quadratic cost: the
    regex rescans to the end of the text for every opener that is never closed (4 MB
    of "/* " took hours).
    """
    if len(delims) == 1:  # C's /* */: the same walk without the bookkeeping
        ((o, c),) = delims
        yield from _one_kind(text, o, c, text.find(o))
        return
    close = dict(delims)
    nxt = {o: text.find(o) for o, _c in delims}
    present = [o for o, at in nxt.items() if at >= 0]
    if len(present) <= 1:  # one kind in the text: a Python file without ''' blocks, most often
        for o in present:
            yield from _one_kind(text, o, close[o], nxt[o])
        return
    while True:
        i, o = -1, ""
        for k, v in nxt.items():  # the leftmost opener still to come (ties: the smaller)
            if v >= 0 and (i < 0 or (v, k) < (i, o)):
                i, o = v, k
        if i < 0:
            return
        j = text.find(close[o], i + len(o))
        if j < 0:  # never closed: no later opener of this kind can be closed either
            nxt[o] = -1
            continue
        yield text[i + len(o) : j]
        pos = j + len(close[o])
        for k, v in nxt.items():
            if 0 <= v < pos:
                nxt[k] = text.find(k, pos)


def _one_kind(text: str, o: str, c: str, i: int) -> Iterator[str]:
    """`_blocks` with a single kind of delimiter, from its first opener at `i`: the same
    answer without choosing the leftmost kind each time (1 µs a block)."""
    while i >= 0:
        j = text.find(c, i + len(o))
        if j < 0:
            return
        yield text[i + len(o) : j]
        i = text.find(o, j + len(c))
