"""Bilingual keyword and pattern matching: categories in, matches with confidence out.

One pyahocorasick automaton holds every term of every loaded category — its primary
keywords, its `supporting`, `requires_context` and `excludes` terms — plus the generic
equipment names and genre markers of `corroboration` (Chinese and English; ASCII folded
to lower case, so matching is case-insensitive for English and exact for Chinese).
Compiled regular expressions cover the patterns (resident ID numbers, ECCNs...) with
optional validators that reject look-alikes.

Like a DLP content rule (a primary element plus supporting elements in a proximity
window), per category and text (the window's reductions are in `proximity`):
- primary hits are reduced to leftmost-longest, so the overlapping keywords of one
  phrase ("稀土萃取分离" containing "稀土萃取" and "萃取分离") count once; `distinct`
  counts different terms, and that is what `min_count` compares;
- a primary hit with an `excludes` term within the window does not count;
- corroboration is the number of different pieces of evidence within the window of a
  primary hit: numbers with process units, pH, tolerances, procedure steps, equipment,
  chemical formulas, code, and the category's `supporting` terms;
- genre markers anywhere in the text (news, marketing, datasheet, licence, abstract)
  lower the confidence; a missing `requires_context` or a stated value clearly below a
  legal `threshold` makes it low; values meeting the thresholds raise it.

`counts()` returns, per category index, an `Evidence` packed into one int (so the
classifier can cache it as a number and add the file name's to the content's);
`matches()` turns those into `CategoryMatch(category, count, pack, distinct,
confidence)`. Only counts leave this module; the text is never stored.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import ahocorasick

from agent.categories import QUANTITY_WORDS, CategorySpec, Threshold
from agent.classify import corroboration as corr
from agent.classify import proximity
from agent.classify.corroboration import Evidence, basis, confidence
from agent.events import CategoryMatch
from agent.linear_regex import LinearPattern, PatternRefused, compile_pack_regex
from agent.validators import VALIDATORS

log = logging.getLogger(__name__)

MAX_PATTERN_MATCHES = 100_000
MAX_HITS = 100_000  # keyword hits kept per category, role and text (memory bound)
KEY_VERSION = "2"  # bump when the meaning of a cached tally changes
_ASCII_UPPER = str.maketrans({chr(c): chr(c + 32) for c in range(65, 91)})

PRIMARY, SUPPORT, CONTEXT, EXCLUDE, EQUIPMENT, NEGATIVE = range(6)
_GLOBAL = -1  # category index of the generic terms


def fold(text: str) -> str:
    """NFKC (full-width Ｌａｔｉｎ and compatibility forms to plain ones), then ASCII lower case.

    Chinese and other scripts otherwise stay as they are. Lower-casing ASCII keeps the
    length, so positions in `fold(t)` and `_nfkc(t)` are the same.
    """
    return _ascii_lower(_nfkc(text))


def _ascii_lower(text: str) -> str:
    """A-Z to a-z, nothing else: `str.lower` on ASCII text (the same result, and a C loop
    without a table lookup a character: 2.5 % of a small file's classification)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_UPPER)


def _nfkc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


# --- matcher ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Pattern:
    category: int
    regex: LinearPattern
    validator: Callable[[str], bool] | None


@dataclass(slots=True)
class _Hits:
    """Raw hits of one text for one category, positions in the folded text."""

    primary: list[tuple[int, int, str]]  # (start, end, term)
    support: list[tuple[int, str]]
    exclude: list[int]
    context: int = 0


class KeywordMatcher:
    """Built once per set of categories; `match()` is thread-safe (read-only state)."""

    def __init__(self, categories: Sequence[CategorySpec]) -> None:
        self.categories = list(categories)
        self.key = categories_key(self.categories)
        self.index = {c.code: i for i, c in enumerate(self.categories)}  # code -> index
        self._automaton: ahocorasick.Automaton | None = None
        self._ascii_automaton: ahocorasick.Automaton | None = None
        self._patterns: list[_Pattern] = []
        self._thresholds = [
            [(t, tuple(fold(w) for w in t.words or QUANTITY_WORDS.get(t.quantity, ())))
             for t in cat.thresholds]
            for cat in self.categories
        ]  # fmt: skip
        entries: dict[str, list[tuple[int, int]]] = {}
        for index, cat in enumerate(self.categories):
            for role, words in (
                (PRIMARY, cat.keywords),
                (SUPPORT, cat.supporting),
                (CONTEXT, cat.requires_context),
                (EXCLUDE, cat.excludes),
            ):
                for word in words:
                    entries.setdefault(fold(word.strip()), []).append((role, index))
            validator = VALIDATORS.get(cat.validator) if cat.validator else None
            if cat.validator and validator is None:
                log.warning("category %s: unknown validator %r ignored", cat.code, cat.validator)
            for pattern in cat.patterns:
                try:  # pack patterns run on RE2: linear time, whatever the text
                    rx = compile_pack_regex(pattern)
                except PatternRefused as e:
                    log.warning("category %s: pattern %r refused: %s", cat.code, pattern, e)
                    continue
                self._patterns.append(_Pattern(index, rx, validator))
        self._any_pattern = _union([p.regex for p in self._patterns])
        self._support_rx = [
            [compile_pack_regex(p) for p in cat.supporting_patterns if _compiles(p)]
            for cat in self.categories
        ]
        self._genres = tuple(corr.GENRES)
        self._ignored = [
            frozenset(self._genres.index(g) for g in c.ignore_genres if g in corr.GENRES)
            for c in self.categories
        ]
        if entries:
            for word in corr.EQUIPMENT:
                entries.setdefault(fold(word), []).append((EQUIPMENT, _GLOBAL))
            for genre, words in enumerate(corr.GENRES.values()):
                for word in words:
                    entries.setdefault(fold(word), []).append((NEGATIVE, genre))
        auto = ahocorasick.Automaton()
        # the same terms without those that hold a non-ASCII character, for ASCII texts
        # (most source and data files): such a term cannot occur in them, and the root of
        # the full automaton, with a branch per Chinese first character, is searched
        # linearly at every character (21 µs for 400 characters of comments, 7 µs here).
        # Its ASCII branches and their fail links are the same, so are the hits and order.
        ascii_auto = ahocorasick.Automaton()
        for w, roles in entries.items():
            if not w:
                continue
            # an English word must stand alone ("ASR" not inside "LASER"); CJK needs no
            # boundaries (no spaces between words)
            edges = (_is_word(w[0]), _is_word(w[-1]))
            value = (len(w), edges, w, tuple(dict.fromkeys(roles)))
            auto.add_word(w, value)
            if w.isascii():
                ascii_auto.add_word(w, value)
        if len(auto):
            auto.make_automaton()
            self._automaton = auto
            self._ascii_automaton = auto
        if len(ascii_auto):
            ascii_auto.make_automaton()
            self._ascii_automaton = ascii_auto

    # --- per text ------------------------------------------------------------------------
    def evidence(self, texts: Iterable[str]) -> dict[int, Evidence]:
        """Evidence per category index over the texts (each text judged on its own)."""
        out: dict[int, Evidence] = {}
        for text in texts:
            if not text:
                continue
            for i, ev in self._text_evidence(text).items():
                old = out.get(i)
                out[i] = ev if old is None else old + ev
        return out

    def counts(self, texts: Iterable[str]) -> Counter[int]:
        """Packed `Evidence` per category index (what the classifier caches and adds up)."""
        return Counter({i: ev.pack() for i, ev in self.evidence(texts).items()})

    def _text_evidence(self, text: str) -> dict[int, Evidence]:
        norm = _nfkc(text)
        folded = _ascii_lower(norm)
        hits: dict[int, _Hits] = {}
        equipment: list[tuple[int, str]] = []
        negative: dict[str, int] = {}  # genre marker -> its genre's index

        def of(i: int) -> _Hits:
            h = hits.get(i)
            if h is None:
                h = hits[i] = _Hits([], [], [])
            return h

        automaton = self._ascii_automaton if folded.isascii() else self._automaton
        if automaton is not None:
            last = len(folded) - 1
            for end, (length, (sw, ew), word, roles) in automaton.iter(folded):
                start = end - length + 1
                if sw and start > 0 and _is_word(folded[start - 1]):
                    continue
                if ew and end < last and _is_word(folded[end + 1]) and not _plural(folded, end):
                    continue
                for role, i in roles:
                    if role == PRIMARY:
                        h = of(i)
                        if len(h.primary) < MAX_HITS:
                            h.primary.append((start, end + 1, word))
                    elif role == SUPPORT:
                        h = of(i)
                        if len(h.support) < MAX_HITS:
                            h.support.append((start, "s:" + word))
                    elif role == CONTEXT:
                        of(i).context += 1
                    elif role == EXCLUDE:
                        h = of(i)
                        if len(h.exclude) < MAX_HITS:
                            h.exclude.append(start)
                    elif role == EQUIPMENT:
                        if len(equipment) < MAX_HITS:
                            equipment.append((start, "equipment:" + word))
                    elif len(negative) < 64:
                        negative[word] = i
        patterns = self._patterns
        if self._any_pattern is not None and not self._any_pattern.found(norm):
            patterns = []  # one pass over the text says none of them can match
        for p in patterns:
            n = 0
            for m in p.regex.finditer(norm):
                if p.validator is None or p.validator(m.group(0)):
                    of(p.category).primary.append((m.start(), m.end(), "p:" + fold(m.group(0))))
                    n += 1
                    if n >= MAX_PATTERN_MATCHES:
                        break
        generic: list[tuple[int, str]] | None = None
        out: dict[int, Evidence] = {}
        for i, h in hits.items():
            cat = self.categories[i]
            kept = proximity.exclude(
                proximity.leftmost_longest(h.primary), sorted(h.exclude), cat.window
            )
            if not kept:
                continue
            near = 0
            if cat.corroborate:
                if generic is None:
                    generic = proximity.generic(folded, norm, equipment)
                for rx in self._support_rx[i]:
                    for n, m in enumerate(rx.finditer(norm)):
                        if n >= corr.MAX_HITS:
                            break
                        h.support.append((m.start(), "sp:" + fold(m.group(0))))
                near = proximity.corroboration(kept, sorted(h.support) + generic, cat.window)
            above = below = 0
            for t, words in self._thresholds[i]:
                if not _applies(t, folded):
                    continue
                reading = corr.compare(corr.read_quantity(folded, words, t.unit), t.op, t.value)
                if reading.values:
                    above += reading.met
                    below += not reading.met
            out[i] = Evidence(
                occurrences=len(kept),
                distinct=len({term for _, _, term in kept}),
                corroboration=near,
                negative=sum(g not in self._ignored[i] for g in negative.values()),
                context=h.context,
                above=above,
                below=below,
            )
        return out

    # --- judgement -----------------------------------------------------------------------
    def matches(self, counts: Counter[int], kinds: Sequence[str]) -> tuple[CategoryMatch, ...]:
        """Every category with a primary hit whose `kinds` fit the artefact.

        Whether it is *present* (distinct >= min_count and confidence >= min_confidence)
        is the policy's call (agent.policy.facts); below-minimum and low-confidence matches
        are kept so that `policy explain` can say why a category did not fire.
        """
        out = []
        for index, n in sorted(counts.items()):
            cat = self.categories[index]
            ev = Evidence.unpack(n)
            if ev.distinct < 1:
                continue
            if cat.kinds and not set(cat.kinds) & set(kinds):
                continue
            out.append(
                CategoryMatch(
                    category=cat.code,
                    count=ev.occurrences,
                    pack=cat.pack,
                    distinct=ev.distinct,
                    confidence=confidence(cat, ev),
                    basis=basis(cat, ev),
                )
            )
        return tuple(out)

    def match(self, texts: Iterable[str], kinds: Sequence[str]) -> tuple[CategoryMatch, ...]:
        return self.matches(self.counts(texts), kinds)


def _applies(t: Threshold, folded: str) -> bool:
    """`when`: one of these terms is in the text; `unless`: none is (LMFP is not LFP)."""
    if t.when and not any(fold(w) in folded for w in t.when):
        return False
    return not any(fold(w) in folded for w in t.unless)


def _union(patterns: Sequence[LinearPattern]) -> LinearPattern | None:
    """One RE2 program that matches where any of `patterns` does, or None.

    Most texts match no pattern at all; one search of the alternation says so where a
    search per pattern cost a call each (14 patterns, 28 calls for a small source file
    and its name). An alternation matches at a position exactly when one of its
    branches does, so the answer is the same; past RE2's bounds there is simply no
    shortcut.
    """
    if len(patterns) < 2:
        return None
    try:
        return compile_pack_regex("|".join(f"(?:{p.pattern})" for p in patterns))
    except PatternRefused:
        return None


def _compiles(pattern: str) -> bool:
    try:
        compile_pack_regex(pattern)
    except PatternRefused as e:
        log.warning("supporting pattern %r refused: %s", pattern, e)
        return False
    return True


def _plural(folded: str, end: int) -> bool:
    """An English keyword followed by a plural s ("ingots", "recommender systems")."""
    nxt = end + 2
    return folded[end + 1] == "s" and (nxt >= len(folded) or not _is_word(folded[nxt]))


def _is_word(ch: str) -> bool:
    """ASCII letters and digits: the characters that glue English words together."""
    return ch.isascii() and ch.isalnum()


def categories_key(categories: Sequence[CategorySpec]) -> str:
    """A short stable fingerprint of the categories, for keying cached results.

    The repr of a frozen dataclass names every field, so a new field (window, excludes,
    thresholds...) is part of the key without anyone remembering to add it.
    """
    h = hashlib.sha256(f"keywords-v{KEY_VERSION}\0".encode())
    for c in categories:
        h.update(repr(c).encode())
    return h.hexdigest()[:16] if categories else "none"
