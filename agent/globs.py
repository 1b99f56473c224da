"""`files.exclude` globs, compiled once into one regular expression.

The one matcher for these globs: the file sensor (what it neither watches nor reports)
and `egress-agent scan` (what its walk skips) both use it, so a file the daemon ignores
is never classified by a scan, nor the other way round. It lives here, outside the
sensor package, because importing that package loads SQLAlchemy — CPU a scan's start
does not need.

Syntax (matched against the whole absolute path): `*` is any run of characters
within one path component, `?` one such character, `[...]` a character class, `**`
any run of components. `**/` may match nothing (`**/x` matches `/x` and `/a/b/x`),
and a trailing `/**` also matches the directory itself, so an excluded directory is
neither watched nor scanned. A pattern without a `/` matches a file name anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable


def glob_to_regex(pattern: str) -> str:
    if "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_excludes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate `path -> excluded?`; never true when there are no patterns."""
    parts = [glob_to_regex(p) for p in patterns if p]
    if not parts:
        return lambda _path: False
    rx = re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)
    match = rx.match
    return lambda path: match(path) is not None
