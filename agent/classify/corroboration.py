"""Generic evidence around category keywords: what makes a text a technology carrier.

Mature DLP content rules (Microsoft Purview sensitive information types, Google Cloud
DLP hotwords) do not trust a keyword alone: a primary element needs supporting elements
near it, and some nearby words lower the likelihood. This module holds the vocabulary
that is the same for every category — numbers with process units, procedure steps,
equipment, chemical formulas, code, the genre markers of news, marketing, datasheets,
licences and abstracts — and reads numeric quantities (压实密度 2.60 g/cm³) for the
thresholds a law states. Categories add their own supporting terms in the packs.
`Evidence` is what one category found in a text and `confidence()` / `basis()` judge
it; the matcher (`keywords`) collects it.

Everything here is a pure function of already folded text (`keywords.fold`: NFKC, ASCII
lower case) and bounded: every scan stops after `MAX_HITS` hits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields

from agent.categories import UNIT_FORMS, CategorySpec

MAX_HITS = 10_000  # per kind of evidence and text: a huge text cannot make this quadratic
QUANTITY_LOOKAHEAD = 80  # characters after a quantity's words searched for its value

# --- numbers with units (after NFKC: ℃ -> °c, ³ -> 3, µ -> μ) -------------------------
_UNITS = (
    "°c/min", "°c", "摄氏度", "mpa", "kpa", "gpa", "bar", "torr", "pa·s", "mpa·s",
    "g/cm3", "g/cc", "g/ml", "mah/g", "mah", "ma/cm2", "ma/g", "wh/kg", "wh/l", "kwh",
    "rpm", "r/min", "转/分", "nm", "μm", "um", "mm", "mol/l", "mmol/l", "mg/l", "g/l",
    "ml/min", "l/min", "l/h", "m3/h", "wt.%", "wt%", "at.%", "at%", "vol%", "ppm", "ppb",
    "kv", "kw", "mw", "hz", "khz", "mhz", "ghz", "dbm", "db", "mesh", "小时", "分钟",
    "ng/μl", "μg/μl", "μg/ml", "mg/ml", "ng/ml", "μmol/l", "nmol/l", "sccm",
    "ms/cm", "μs/cm", "s/cm", "kev", "mev", "ev", "koe", "ka/m", "μl", "ml", "μg", "mg",
    "h", "min", "v",
)  # fmt: skip
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_NUMBER = r"(?<![0-9a-z.])\d+(?:\.\d+)?"
_WITH_UNIT = re.compile(rf"{_NUMBER}\s?(?:~|-|–)?\s?(?:\d+(?:\.\d+)?)?\s?({_UNIT_ALT})(?![a-z0-9])")
_PH = re.compile(r"(?<![a-z])ph\s?(?:=|:|值|为|of|at)?\s?\d")
_TOLERANCE = re.compile(r"(?:[≥≤±]|>=|<=|不低于|不高于|不小于|不大于)\s?\d")
_STEPS = re.compile(
    r"(?<![a-z])step\s?\d{1,2}(?![0-9])|步骤|工序|第[一二三四五六七八九十0-9]{1,3}步"
)
_CODE = re.compile(
    r"(?:^|\n)\s*(?:def |class |import |from \S+ import |#include\s?<|for\s?\(|while\s?\()"
    r"|\w\s?=\s?(?:np|torch|tf|nn|pd)\.\w+"
)
_FORMULA = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Za-z0-9()]{1,24}(?![A-Za-z0-9])")
_ELEMENT_TOKEN = re.compile(r"([A-Z][a-z]?)(\d+(?:\.\d+)?)?|[()]\d*")
_ELEMENT_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm "
    "Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Ra Ac Th Pa "
    "U Np Pu"
)
_ELEMENTS = frozenset(_ELEMENT_SYMBOLS.split(" "))

# equipment of process industry and labs: names on a process sheet, not in a news line
EQUIPMENT = (
    "reactor", "autoclave", "furnace", "kiln", "mixer-settler", "mixer settler",
    "centrifuge", "ball mill", "bead mill", "spray dryer", "calciner", "glovebox",
    "glove box", "electrolytic cell", "electrolyser", "electrolyzer", "crucible",
    "evaporator", "crystallizer", "filter press", "ion-exchange column", "adsorption column",
    "coater", "calender", "winding machine", "stacking machine", "extruder", "incubator",
    "thermocycler", "micromanipulator", "反应釜", "萃取槽", "混合澄清槽", "烧结炉", "窑炉",
    "回转窑", "辊道窑", "球磨机", "砂磨机", "喷雾干燥", "离心机", "电解槽", "坩埚",
    "蒸发器", "结晶器", "压滤机", "干燥箱", "手套箱", "搅拌釜", "管式炉", "马弗炉",
    "吸附柱", "离子交换柱", "涂布机", "辊压机", "卷绕机", "叠片机", "培养箱", "显微注射",
)  # fmt: skip

# genre markers: texts that name a technology without carrying it. A category may ignore
# some genres (`ignore_genres`): for goods, a product datasheet is the carrier.
GENRES: dict[str, tuple[str, ...]] = {
    "news": (
    "据报道", "记者", "新华社", "新闻", "日电", "消息称", "报道称", "央视", "人民日报",
    "reuters", "xinhua", "announced", "press release", "news agency", "journalist",
    "spokesperson", "told reporters",
    ),
    "marketing": (
    "世界领先", "国际领先", "行业领先", "欢迎垂询", "联系我们", "咨询热线", "销售热线",
    "world-leading", "industry-leading", "leading provider", "contact us", "learn more",
    "request a quote", "our customers", "sales team", "sales call", "pipeline review",
    "contact sales", "contact our", "volume pricing", "ideal for", "product brief",
    "key features", "产品特点", "产品优势", "应用领域", "典型应用", "产品简介",
    ),
    "datasheet": (
    "datasheet", "data sheet", "ordering information", "rated voltage", "rated power",
    "rated torque", "rated speed", "product specification", "规格书", "额定电压",
    "额定功率", "额定转速", "订货信息", "产品型号", "典型值", "保质期",
    "typical properties", "typical values", "values are typical", "not a specification",
    "shelf life", "sales representative", "our products",
    ),
    "licence": (
    "license agreement", "licence agreement", "end user license", "eula", "licensee",
    "licensor", "warranty", "hereby", "terms and conditions", "许可协议", "最终用户",
    ),
    "abstract": (
    "abstract", "摘要", "keywords:", "关键词", "in this paper", "we propose", "we report",
    "this review", "review summarises", "review summarizes", "we also discuss",
    "本文提出", "本文综述", "本文研究", "综述", "doi:", "et al",
    ),
}  # fmt: skip


def with_units(folded: str) -> Iterator[tuple[int, str]]:
    """(position, "unit:<unit>") of every number followed by a process unit."""
    for n, m in enumerate(_WITH_UNIT.finditer(folded)):
        if n >= MAX_HITS:
            return
        yield m.start(), "unit:" + m.group(1)


def markers(folded: str, norm: str) -> Iterator[tuple[int, str]]:
    """(position, evidence id) of pH values, tolerances, steps, code and formulas.

    `norm` is the NFKC text before lower-casing (the same length as `folded`): chemical
    formulas need their capitals (LiFePO4, Nd2Fe14B), the rest is read from `folded`.
    """
    for rx, name in ((_PH, "ph"), (_TOLERANCE, "tolerance"), (_STEPS, "steps"), (_CODE, "code")):
        for n, m in enumerate(rx.finditer(folded)):
            if n >= MAX_HITS:
                break
            yield m.start(), name
    for n, m in enumerate(_FORMULA.finditer(norm)):
        if n >= MAX_HITS:
            break
        if is_formula(m.group(0)):
            yield m.start(), "formula"


def is_formula(token: str) -> bool:
    """LiFePO4, Li2CO3, Nd2Fe14B, (NH4)2SO4: element symbols only, two or more, a digit.

    HEK293 (E is no element), UTF8 and 5G are not formulas.
    """
    pos, elements, digit = 0, 0, False
    while pos < len(token):
        m = _ELEMENT_TOKEN.match(token, pos)
        if m is None or m.end() == pos:
            return False
        if m.group(1) is not None:
            if m.group(1) not in _ELEMENTS:
                return False
            elements += 1
        digit = digit or any(c.isdigit() for c in m.group(0))
        pos = m.end()
    return elements >= 2 and digit


# --- evidence and confidence ---------------------------------------------------------
_SHIFT = 32  # occurrences below, then 16-bit fields
_FIELD_CAP = 0x0FFF  # per text: sixteen texts can be added before a field could overflow


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one category found in some text (additive: texts add their evidence)."""

    occurrences: int = 0  # primary hits after leftmost-longest and exclusions
    distinct: int = 0  # different primary terms (keywords, pattern values)
    corroboration: int = 0  # different pieces of evidence near a primary hit
    negative: int = 0  # different genre markers in the text
    context: int = 0  # `requires_context` terms in the text
    above: int = 0  # thresholds whose stated value meets the limit
    below: int = 0  # thresholds with values stated, none meeting the limit

    def pack(self) -> int:
        n = min(self.occurrences, 2**31 - 1)
        for i, f in enumerate(fields(self)[1:]):
            n |= min(getattr(self, f.name), _FIELD_CAP) << (_SHIFT + 16 * i)
        return n

    def __add__(self, other: Evidence) -> Evidence:
        """Texts add their evidence (the file name's to the content's)."""
        return Evidence(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def unpack(cls, n: int) -> Evidence:
        values = [n & (2**_SHIFT - 1)]
        values += [(n >> (_SHIFT + 16 * i)) & 0xFFFF for i in range(len(fields(cls)) - 1)]
        return cls(*values)


def confidence(spec: CategorySpec, ev: Evidence) -> str:
    """low | medium | high for one category's evidence (see the module docstring)."""
    if not spec.corroborate:  # identifiers: a validated pattern is as sure as it gets
        return "high" if spec.validator else "medium"
    if spec.requires_context and ev.context == 0:
        return "low"
    if ev.below:
        return "low"
    level = 2 if ev.corroboration >= 3 else 1 if ev.corroboration >= 1 else 0
    if ev.above:
        level = min(level + 1, 2)
    # one genre marker costs a level, two or more two: a datasheet stating values above a
    # legal threshold is still a datasheet
    level -= min(ev.negative, 2)
    return ("low", "medium", "high")[max(0, min(level, 2))]


def basis(spec: CategorySpec, ev: Evidence) -> str:
    """The evidence behind `confidence()`, in words (`policy explain` shows it)."""
    if not spec.corroborate:
        return "identifier pattern" + (f" checked by {spec.validator}" if spec.validator else "")
    n = ev.corroboration
    parts = [f"{n} piece{'s' if n != 1 else ''} of evidence near the terms"]
    if spec.requires_context and ev.context == 0:
        parts.append(f"no required context ({', '.join(spec.requires_context[:3])}...)")
    if ev.below:
        parts.append(f"{ev.below} stated value(s) below the legal threshold")
    if ev.above:
        parts.append(f"{ev.above} stated value(s) meeting the legal threshold")
    if ev.negative:
        parts.append(f"{ev.negative} news/marketing/datasheet/licence/abstract marker(s)")
    return "; ".join(parts)


# --- quantities for legal thresholds ---------------------------------------------------
_VALUE = {
    unit: re.compile(
        r"(\d+(?:\.\d+)?)\s?("
        + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        + r")(?![a-z0-9])"
    )
    for unit, forms in UNIT_FORMS.items()
}
_OPS = {
    "ge": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
}


@dataclass(frozen=True, slots=True)
class Reading:
    """What a text says about one threshold: values found, and whether any meets it."""

    values: tuple[float, ...]
    met: bool


def read_quantity(folded: str, words: tuple[str, ...], unit: str) -> tuple[float, ...]:
    """Values in `unit` stated right after the quantity's words (first one per mention)."""
    rx = _VALUE.get(unit)
    if rx is None:
        return ()
    out: list[float] = []
    for word in words:
        start = 0
        while len(out) < 64:
            at = folded.find(word, start)
            if at < 0:
                break
            start = at + len(word)
            m = rx.search(folded, start, start + QUANTITY_LOOKAHEAD)
            if m is not None:
                out.append(float(m.group(1)))
    return tuple(out)


def compare(values: tuple[float, ...], op: str, limit: float) -> Reading:
    return Reading(values, any(_OPS[op](v, limit) for v in values))
