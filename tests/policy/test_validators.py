"""Validators: GB 11643 resident IDs, mainland mobile numbers, Luhn card numbers."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from agent.validators import VALIDATORS, cn_mobile, luhn, prc_resident_id
from tests.policy.makefiles import resident_id


def test_known_resident_ids() -> None:
    # the GB 11643 worked example and a check character of X
    assert prc_resident_id("11010519491231002X")
    assert prc_resident_id("440524188001010014")
    assert not prc_resident_id("110105194912310021")  # wrong check character
    assert not prc_resident_id("11010519491331002X")  # month 13
    assert not prc_resident_id("01010519491231002X")  # region cannot start with 0
    assert not prc_resident_id("1101051949123100")
    assert not prc_resident_id("１１０１０５１９４９１２３１００２Ｘ")  # full-width digits


@given(st.integers(0, 2**32), st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_caught(seed: int, pos: int, delta: int) -> None:
    good = resident_id(random.Random(seed))
    assert prc_resident_id(good)
    changed = good[:pos] + str((int(good[pos]) + delta) % 10) + good[pos + 1 :]
    # a changed digit may also make the date invalid; either way it must not validate
    assert not prc_resident_id(changed)


@given(st.text(max_size=40))
def test_validators_never_raise(text: str) -> None:
    for fn in VALIDATORS.values():
        assert fn(text) in (True, False)


def test_mobile_and_cards() -> None:
    assert cn_mobile("13812345678")
    assert cn_mobile("+86 138-1234-5678")
    assert not cn_mobile("12812345678")
    assert not cn_mobile("1381234567")
    assert luhn("6222021234567890123") is (sum_luhn("6222021234567890123") % 10 == 0)
    assert luhn("4111111111111111")
    assert not luhn("4111111111111112")


def sum_luhn(s: str) -> int:
    total = 0
    for i, c in enumerate(reversed(s)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total
