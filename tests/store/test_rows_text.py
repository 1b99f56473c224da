"""`storable_text`: any Python string becomes text every backend stores (UTF-8, no NUL)."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from agent.store.rows import storable_text


# lone surrogates often: file-name escapes (U+DC80..U+DCFF) and the ones no name can hold
@given(st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))
def test_any_text_is_storable(s: str) -> None:
    out = storable_text(s)
    assert out is not None
    out.encode("utf-8")  # never raises
    assert "\x00" not in out


def test_file_name_bytes_and_lone_surrogates_are_spelled_out() -> None:
    assert storable_text(os.fsdecode(b"caf\xe9.txt")) == "caf\\xe9.txt"
    assert storable_text("\udd00 note") == "\\udd00 note"
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("模型") == "模型"
    assert storable_text(None) is None
