"""Export-control categories as the classifier sees them.

Policy packs define categories (catalogue code, names, bilingual keywords, patterns,
the artefact kinds they apply to); the policy loader turns them into `CategorySpec`s
and the classifier's keyword matcher consumes them ("categories in, matches with
counts out"). This module is the seam between the two: neither imports the other.

Tag details the classifier promises (policy conditions may use them):
- model_weights: format, parameters, tensors, dtype
- dataset: format, columns, rows
- source_code: language, git_remote, git_commit
- archive: format, members, nested_kinds
- document: format, chars
- engineering: format
- secret: type
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CategorySpec:
    code: str  # e.g. "CN-184202X" or "PI-RESIDENT-ID"; unique across loaded packs
    pack: str
    name_en: str = ""
    name_zh: str = ""
    keywords: tuple[str, ...] = ()  # Chinese and English literals, matched case-insensitively
    patterns: tuple[str, ...] = ()  # Python regular expressions, validated at load
    validator: str | None = None  # post-match check for patterns, e.g. "prc_resident_id"
    kinds: tuple[str, ...] = ()  # artefact kinds it applies to; empty means any
    min_count: int = 1  # matches needed before the category counts as present


CategoryProvider = Callable[[], Sequence[CategorySpec]]
"""Returns the categories of the policy in force; the same object until a reload."""
