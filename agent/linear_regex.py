"""Linear-time regular expressions for everything a policy pack supplies.

A pack is written by a site, and a pattern such as `^(a+)+$` makes Python's
backtracking `re` run for ever on a line of `a`s — inside `policy check`, and inside
the classifier on every file. Pack patterns (rule `regex:` conditions, category
`patterns:`) therefore compile with RE2 (`google-re2`), whose matching time is linear in
the text and whose memory is capped. RE2 refuses what needs backtracking: lookahead and
lookbehind (`(?=`, `(?!`, `(?<=`, `(?<!`), backreferences (`\\1`, `(?P=name)`),
possessive and atomic forms, and conditionals. `compile_pack_regex` raises
`PatternRefused` with one sentence naming what was refused, so the loader can report
it with the pack's file and line.

Patterns written by us in Python code keep using `re`; only outside input comes here.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import re2

from agent.errors import UserFacingError

MAX_PATTERN_LENGTH = 2_000
MAX_PROGRAM_BYTES = 8 << 20  # RE2's memory budget for one compiled pattern

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported by the loader, not on stderr
_OPTIONS.max_mem = MAX_PROGRAM_BYTES

# what RE2 cannot do, by the syntax that asks for it, in words a pack author knows
_UNSUPPORTED = (
    (re.compile(r"\(\?<?[=!]"), "lookahead/lookbehind assertions"),
    (re.compile(r"\(\?P=\w+\)"), "backreferences"),
    (re.compile(r"\(\?>"), "atomic groups"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers"),
    (re.compile(r"\(\?\("), "conditional groups"),
)


# RE2 matches UTF-8: a lone surrogate (a non-UTF-8 byte of a file name, kept by
# os.fsdecode) cannot be encoded, so it is matched as U+FFFD (same length, same offsets)
_SURROGATE = re.compile("[\ud800-\udfff]")


# google-re2's own names for "search anywhere" and "no match" (its Python layer uses them)
_UNANCHORED = re2._Anchor.UNANCHORED
_NO_MATCH = re2._NULL_SPAN


def _encodable(text: str) -> str:
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


class _Re2Pattern:
    """An RE2 pattern that accepts any Python string, surrogates included."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, rx: Any) -> None:
        self._rx = rx
        self.pattern = rx.pattern

    def search(self, text: str) -> Any:
        return self._rx.search(_encodable(text))

    def finditer(self, text: str) -> Any:
        return self._rx.finditer(_encodable(text))

    def found(self, text: str) -> bool:
        """`search(text) is not None`, asked of RE2 directly: no Match object, no byte
        offsets turned back into characters, no generator (3 µs a call against 8)."""
        data = _encodable(text).encode("utf-8")
        return bool(self._rx._regexp.Match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH)


class PatternRefused(UserFacingError, ValueError):
    """A pack pattern that cannot run in linear time, or that does not parse."""


class LinearPattern(Protocol):
    """The part of a compiled pattern that rules and the keyword matcher use."""

    pattern: Any

    def search(self, text: str) -> Any: ...

    def finditer(self, text: str) -> Any: ...

    def found(self, text: str) -> bool: ...


def compile_pack_regex(pattern: str) -> LinearPattern:
    """Compile a pattern from a policy pack with RE2, or raise `PatternRefused`."""
    if not isinstance(pattern, str):
        raise PatternRefused("a pattern must be a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternRefused(
            f"pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}"
        )
    for syntax, what in _UNSUPPORTED:
        if syntax.search(pattern):
            raise PatternRefused(
                f"{what} are not supported: pack patterns run on RE2, a linear-time engine"
            )
    try:
        return _Re2Pattern(re2.compile(pattern, _OPTIONS))
    except re2.error as e:
        detail = (
            e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else e
        )
        raise PatternRefused(f"bad regular expression: {detail}") from None
    except Exception as e:  # RE2 reports some pattern problems with other types
        raise PatternRefused(f"bad regular expression: {e}") from None
