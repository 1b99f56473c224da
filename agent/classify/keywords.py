"""Bilingual keyword and pattern matching: categories in, matches with counts out.

One pyahocorasick automaton holds every keyword of every loaded category (Chinese and
English; ASCII letters folded to lower case, so matching is case-insensitive for
English and exact for Chinese), and compiled regular expressions cover the patterns
(resident ID numbers, phone numbers...) with optional validators that reject
look-alikes. It runs over the extracted text of a file, its name and its code comments
and returns `CategoryMatch(category, count, pack)` for categories whose `kinds` fit the
artefact and whose count reaches `min_count`. Only counts leave this module; the text
is never stored. The policy side owns the categories (`agent.categories`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import ahocorasick

from agent.categories import CategorySpec
from agent.events import CategoryMatch
from agent.validators import VALIDATORS

log = logging.getLogger(__name__)

MAX_PATTERN_MATCHES = 100_000
_ASCII_UPPER = str.maketrans({chr(c): chr(c + 32) for c in range(65, 91)})


def fold(text: str) -> str:
    """NFKC (full-width Ｌａｔｉｎ and compatibility forms to plain ones), then ASCII lower case.

    Chinese and other scripts otherwise stay as they are; the length may change, so
    positions are only ever used within the folded text.
    """
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.translate(_ASCII_UPPER)


# --- matcher -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Pattern:
    category: int
    regex: re.Pattern[str]
    validator: Callable[[str], bool] | None


class KeywordMatcher:
    """Built once per set of categories; `match()` is thread-safe (read-only state)."""

    def __init__(self, categories: Sequence[CategorySpec]) -> None:
        self.categories = list(categories)
        self.key = categories_key(self.categories)
        self._automaton: ahocorasick.Automaton | None = None
        self._patterns: list[_Pattern] = []
        auto = ahocorasick.Automaton()
        for index, cat in enumerate(self.categories):
            for word in cat.keywords:
                w = fold(word.strip())
                if not w:
                    continue
                # an English word must stand alone ("ASR" not inside "LASER"); CJK needs no
                # boundaries (no spaces between words)
                edges = (_is_word(w[0]), _is_word(w[-1]))
                existing = auto.get(w)[2] if w in auto else ()
                auto.add_word(w, (len(w), edges, (*existing, index)))
            validator = VALIDATORS.get(cat.validator) if cat.validator else None
            if cat.validator and validator is None:
                log.warning("category %s: unknown validator %r ignored", cat.code, cat.validator)
            for pattern in cat.patterns:
                try:
                    rx = re.compile(pattern)
                except re.error as e:
                    log.warning("category %s: pattern %r invalid: %s", cat.code, pattern, e)
                    continue
                self._patterns.append(_Pattern(index, rx, validator))
        if len(auto):
            auto.make_automaton()
            self._automaton = auto

    def counts(self, texts: Iterable[str]) -> Counter[int]:
        """Raw counts per category index over the texts (keywords and patterns)."""
        counts: Counter[int] = Counter()
        for text in texts:
            if not text:
                continue
            if self._automaton is not None:
                folded = fold(text)
                last = len(folded) - 1
                for end, (length, (start_word, end_word), indexes) in self._automaton.iter(folded):
                    start = end - length + 1
                    if start_word and start > 0 and _is_word(folded[start - 1]):
                        continue
                    if end_word and end < last and _is_word(folded[end + 1]):
                        continue
                    for i in indexes:
                        counts[i] += 1
            for p in self._patterns:
                n = 0
                for m in p.regex.finditer(text):
                    if p.validator is None or p.validator(m.group(0)):
                        n += 1
                        if n >= MAX_PATTERN_MATCHES:
                            break
                if n:
                    counts[p.category] += n
        return counts

    def matches(self, counts: Counter[int], kinds: Sequence[str]) -> tuple[CategoryMatch, ...]:
        """Categories present: count at least `min_count` and `kinds` fitting the artefact."""
        out = []
        for index, n in sorted(counts.items()):
            cat = self.categories[index]
            if n < max(cat.min_count, 1):
                continue
            if cat.kinds and not set(cat.kinds) & set(kinds):
                continue
            out.append(CategoryMatch(category=cat.code, count=n, pack=cat.pack))
        return tuple(out)

    def match(self, texts: Iterable[str], kinds: Sequence[str]) -> tuple[CategoryMatch, ...]:
        return self.matches(self.counts(texts), kinds)


def _is_word(ch: str) -> bool:
    """ASCII letters and digits: the characters that glue English words together."""
    return ch.isascii() and ch.isalnum()


def categories_key(categories: Sequence[CategorySpec]) -> str:
    """A short stable fingerprint of the categories, for keying cached results."""
    h = hashlib.sha256()
    for c in categories:
        h.update(repr((c.code, c.pack, c.keywords, c.patterns, c.validator, c.kinds)).encode())
        h.update(str(c.min_count).encode())
    return h.hexdigest()[:16] if categories else "none"
