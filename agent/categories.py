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

CONFIDENCE_LEVELS = ("low", "medium", "high")


def reaches(confidence: str, minimum: str) -> bool:
    """Whether a match's confidence is at least `minimum` (unknown levels count as low)."""
    rank = {c: i for i, c in enumerate(CONFIDENCE_LEVELS)}
    return rank.get(confidence, 0) >= rank.get(minimum, 1)


# the words texts use for the quantities legal thresholds name (EN and ZH, folded)
QUANTITY_WORDS: dict[str, tuple[str, ...]] = {
    "compaction_density": (
        "compaction density", "compacted density", "press density", "pressed density",
        "压实密度",
    ),
    "specific_capacity": (
        "specific capacity", "discharge capacity", "reversible capacity", "gram capacity",
        "克容量", "比容量", "放电容量", "放电比容量",
    ),
    "energy_density": (
        "gravimetric energy density", "energy density", "specific energy", "能量密度",
        "比能量",
    ),
    "first_efficiency": (
        "first coulombic efficiency", "initial coulombic efficiency", "first cycle efficiency",
        "首次库伦效率", "首次库仑效率", "首效",
    ),
    "tap_density": ("tap density", "振实密度"),
}  # fmt: skip

# a threshold's unit -> the ways texts write it (folded, after NFKC)
UNIT_FORMS: dict[str, tuple[str, ...]] = {
    "g/cm3": ("g/cm3", "g/cc", "g/ml", "g·cm-3", "g cm-3", "g.cm-3", "g/cm^3"),
    "mah/g": ("mah/g", "mah g-1", "mah·g-1", "mah.g-1"),
    "wh/kg": ("wh/kg", "wh kg-1", "wh·kg-1", "wh.kg-1"),
    "%": ("%",),
    "v": ("v",),
    "mpa": ("mpa",),
}


@dataclass(frozen=True, slots=True)
class Threshold:
    """A numeric limit the law states, read from the text near the quantity's words.

    E.g. LFP compaction density >= 2.58 g/cm3: `Threshold("compaction_density", "g/cm3",
    "ge", 2.58)`. `words` name the quantity in the text (EN and ZH); empty means the
    matcher's built-in vocabulary for `quantity`.
    """

    quantity: str
    unit: str
    op: str  # ge | gt | le | lt
    value: float
    words: tuple[str, ...] = ()
    when: tuple[str, ...] = ()  # applies only to texts naming one of these (e.g. LMFP)
    unless: tuple[str, ...] = ()  # ...and not to texts naming one of these


@dataclass(frozen=True, slots=True)
class CategorySpec:
    """One category as packs write it; the fields below `min_count` set its confidence.

    Confidence follows mature DLP content rules (a primary element plus supporting
    elements within a proximity window): keywords/patterns are the primary elements;
    corroboration near them (numbers with process units, procedure steps, equipment,
    formulas, code, and the category's own `supporting` terms) raises confidence;
    news, marketing, datasheet, licence and abstract markers in the text lower it.
    """

    code: str  # e.g. "CN-184202X" or "PI-RESIDENT-ID"; unique across loaded packs
    pack: str
    name_en: str = ""
    name_zh: str = ""
    keywords: tuple[str, ...] = ()  # Chinese and English literals, matched case-insensitively
    patterns: tuple[str, ...] = ()  # Python regular expressions, validated at load
    validator: str | None = None  # post-match check for patterns, e.g. "prc_resident_id"
    kinds: tuple[str, ...] = ()  # artefact kinds it applies to; empty means any
    min_count: int = 1  # DISTINCT terms (keywords, pattern values) needed to be present
    # terms that corroborate a primary term within `window` characters of it
    supporting: tuple[str, ...] = ()
    supporting_patterns: tuple[str, ...] = ()  # the same as regular expressions
    # at least one of these somewhere in the text, or the match stays low (e.g. germline
    # editing needs embryo / germ-cell / reproduction context)
    requires_context: tuple[str, ...] = ()
    # a primary term with one of these within `window` characters does not count (e.g.
    # "Core Data" next to NSManagedObject is Apple's framework, not important data)
    excludes: tuple[str, ...] = ()
    thresholds: tuple[Threshold, ...] = ()  # all met -> high; any clearly below -> low
    min_confidence: str = "medium"  # the confidence a match needs to be present
    window: int = 300  # proximity window, characters either side of a primary term
    corroborate: bool = True  # False: no corroboration needed (identifiers: IDs, cards)
    # genres of text that do not lower this category's confidence (news, marketing,
    # datasheet, licence, abstract): for goods, a product datasheet is the carrier
    ignore_genres: tuple[str, ...] = ()


CategoryProvider = Callable[[], Sequence[CategorySpec]]
"""Returns the categories of the policy in force; the same object until a reload."""
