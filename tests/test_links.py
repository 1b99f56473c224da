"""Every relative link in README.md and docs/*.md reaches a file, and every #anchor a heading.

No network: links to other sites are not followed. Anchors are GitHub's: the heading's
text lower-cased, punctuation dropped, spaces as hyphens, repeats numbered (-1, -2).
Links inside code (fenced blocks, `inline`) are text, not links, and are skipped.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of [brackets]
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger on the rendered text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch == " ":
            out.append("-")
        elif ch in "-_" or cat[0] in "LNM":
            out.append(ch)
    return "".join(out)


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _n, line in _prose_lines(page.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for n, line in _prose_lines(page.read_text(encoding="utf-8")):
        prose = INLINE_CODE.sub("", line)
        out.extend((n, target) for target in INLINE_LINK.findall(prose))
        m = REFERENCE_DEF.match(prose)
        if m:
            out.append((n, m.group(1)))
    return out


def broken(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for n, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{fragment}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    assert broken(page) == []


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing anchor, and what it must leave alone."""
    (tmp_path / "other.md").write_text(
        "# Other page\n\n## Fleet mode: PostgreSQL\n## Twice\n## Twice\n"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        "[ok](other.md#fleet-mode-postgresql) [ok](other.md#twice-1) [ok](#title)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [web](https://example.com/x)\n"
        "`[code](not-a-link.md)`\n"
        "```\n[fenced](also-not-a-link.md)\n```\n"
        "[ref]: other.md#twice\n"
        "[badref]: other.md#thrice\n",
        encoding="utf-8",
    )
    assert broken(page, root=tmp_path) == [
        "page.md:3: missing.md: no such file",
        "page.md:3: other.md#nope: no heading with anchor #nope",
        "page.md:9: other.md#thrice: no heading with anchor #thrice",
    ]


def test_slugs_are_githubs() -> None:
    assert slug("Fleet mode: PostgreSQL") == "fleet-mode-postgresql"
    assert slug("`incidents.correlation_window` (seconds)") == "incidentscorrelation_window-seconds"
    assert slug("Cloud sync (坚果云, OneDrive)") == "cloud-sync-坚果云-onedrive"
    assert slug("A [link](x.md) in a heading") == "a-link-in-a-heading"
