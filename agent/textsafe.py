"""One escaper for outside text on every human-facing output: logs, terminal tables, CEF.

File names, pickle global names, SNI names and process command lines are chosen by
whoever made the file or the connection. Written raw, a newline in a file name forges
a complete `CRITICAL agent.daemon` log line, an ESC sequence clears the operator's
screen or hides a row, and a right-to-left override reverses what a table shows. So
every line a person reads goes through `shown()`: control characters (C0, DEL, C1),
bidirectional overrides and isolates, and the surrogate escapes that stand for
non-UTF-8 bytes in file names become visible `\\n`, `\\x1b`, `\\u202e` text. A
backslash itself is left alone: the result is for reading, not for parsing back
(machine formats — JSON, CSV, CEF — have their own reversible escaping).
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls, bidi embeddings/overrides/isolates and marks, line and
# paragraph separators, and lone surrogates (surrogateescape'd bytes of a file name)
BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
"""Regex class body: DEL, C1 and the bidi and line-separator controls (CEF uses it too)."""
_UNSAFE = re.compile(f"[\x00-\x1f{BEYOND_C0}\ud800-\udfff]")


def _visible(m: re.Match[str]) -> str:
    ch = m.group(0)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object) -> str:
    """`text` as one safe line for a log, a table cell or a terminal."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_visible, s)


def has_unsafe(text: str) -> bool:
    """Whether `shown()` would change `text` (for tests and assertions)."""
    return _UNSAFE.search(text) is not None
