"""Post-match validators that a category's patterns may name (`validator: prc_resident_id`).

Shared by policy (which rejects an unknown validator name when it loads a pack) and the
classifier's keyword matcher (which applies them): like `agent.categories`, a seam that
neither side owns, so the two can never disagree.

A regex finds candidates; a validator keeps only the real ones, so that eighteen random
digits are not counted as a resident ID. Each validator is a pure `str -> bool` over the
matched text. The classifier applies them while counting matches; the policy loader
rejects a category naming a validator that is not in `VALIDATORS`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

# GB 11643-1999: weight of position i (0-based, left to right) is 2**(17-i) mod 11
_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_ID_CHECK = "10X98765432"  # check character for (sum mod 11) = 0, 1, 2, ...
_NON_DIGITS = re.compile(r"[\s-]")


def prc_resident_id_check(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character for the first 17 digits."""
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def prc_resident_id(text: str) -> bool:
    """An 18-character PRC resident identity number: region, birth date, checksum."""
    s = text.strip().upper()
    if len(s) != 18 or not s[:17].isascii() or not s[:17].isdigit() or s[0] == "0":
        return False
    try:
        born = dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not 1800 <= born.year <= 2100:
        return False
    return prc_resident_id_check(s[:17]) == s[17]


def cn_mobile(text: str) -> bool:
    """A mainland China mobile number: 11 digits, 1 then 3-9, optional +86 / 86 prefix."""
    s = _NON_DIGITS.sub("", text.strip())
    if s.startswith("+86"):
        s = s[3:]
    elif s.startswith("86") and len(s) == 13:
        s = s[2:]
    return len(s) == 11 and s.isascii() and s.isdigit() and s[0] == "1" and s[1] in "3456789"


def luhn(text: str) -> bool:
    """A payment card number (13-19 digits) whose Luhn check digit is right."""
    s = _NON_DIGITS.sub("", text.strip())
    if not 13 <= len(s) <= 19 or not s.isascii() or not s.isdigit():
        return False
    total = 0
    for i, c in enumerate(reversed(s)):
        d = int(c)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


VALIDATORS: dict[str, Callable[[str], bool]] = {
    "prc_resident_id": prc_resident_id,
    "cn_mobile": cn_mobile,
    "luhn": luhn,
}
