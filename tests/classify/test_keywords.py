"""Keywords and patterns: bilingual, case-insensitive for ASCII, kinds and min_count honoured,
validators reject look-alikes, the automaton rebuilt only when the categories change."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.categories import CategorySpec
from agent.classify import Classifier, classify_file
from agent.classify.keywords import KeywordMatcher, fold
from agent.config import ClassifySection
from agent.validators import cn_mobile, prc_resident_id
from tests.classify import corpus as C

NO_MAGIKA = ClassifySection(use_magika=False)
RARE_EARTH = CategorySpec(
    code="CN-RARE-EARTH",
    pack="cn-export",
    keywords=("稀土", "Rare Earth", "NdFeB"),
    kinds=("document", "source_code", "archive", "dataset"),
)
LITHO = CategorySpec(code="CN-LITHO", pack="cn-export", keywords=("光刻",), kinds=("source_code",))
IDS = CategorySpec(
    code="PI-ID",
    pack="pi",
    patterns=(r"(?<![0-9A-Za-z])[1-9]\d{16}[\dXx](?![0-9A-Za-z])",),
    validator="prc_resident_id",
    kinds=("dataset", "document"),
)
MANY = CategorySpec(code="NEEDS-3", pack="p", keywords=("widget",), min_count=3)


def make_id(prefix17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(prefix17, weights))
    return prefix17 + "10X98765432"[total % 11]


def test_bilingual_case_insensitive_counts() -> None:
    m = KeywordMatcher([RARE_EARTH, LITHO])
    got = m.match(["RARE EARTH magnets; 稀土永磁; ndfeb; rare earth"], ["document"])
    assert [(x.category, x.count, x.pack) for x in got] == [("CN-RARE-EARTH", 4, "cn-export")]


def test_kinds_must_fit() -> None:
    m = KeywordMatcher([LITHO])
    assert m.match(["光刻胶"], ["document"]) == ()
    assert m.match(["光刻胶"], ["source_code"])[0].count == 1


def test_min_count_compares_distinct_terms_and_presence_is_the_policys() -> None:
    m = KeywordMatcher([MANY])
    (got,) = m.match(["widget widget widget"], ["document"])
    assert (got.count, got.distinct) == (3, 1)  # kept, so explain can say "below minimum"
    assert m.match(["gadget"], ["document"]) == ()


def test_resident_id_validator_rejects_bad_checksums() -> None:
    good = make_id("11010519491231002")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    m = KeywordMatcher([IDS])
    assert m.match([f"id: {good}, other: {bad}"], ["dataset"])[0].count == 1
    assert prc_resident_id(good) and not prc_resident_id(bad)
    assert not prc_resident_id("110105194913310021")  # month 13


def test_cn_mobile() -> None:
    assert cn_mobile("13812345678") and cn_mobile("+86 138-1234-5678")
    assert not cn_mobile("12812345678") and not cn_mobile("1381234567")


@settings(max_examples=200, deadline=1000)
@given(st.text(max_size=500))
def test_matcher_never_raises_and_folding_is_ascii_only(text: str) -> None:
    KeywordMatcher([RARE_EARTH, IDS, MANY]).match([text], ["document"])
    assert fold(fold(text)) == fold(text)  # idempotent
    assert fold("ÄÉ稀土ABC") == "ÄÉ稀土abc"
    assert fold("ＲＡＲＥ ＥＡＲＴＨ") == "rare earth"  # full-width Latin


def test_file_name_document_text_and_code_comments(tmp_path: Path) -> None:
    cats = [RARE_EARTH, LITHO]
    doc = C.docx_file(tmp_path / "report.docx", "稀土 rare earth NdFeB")
    a = classify_file(doc, cats, NO_MAGIKA)
    assert a.matches[0].category == "CN-RARE-EARTH" and a.matches[0].count == 3
    repo = C.git_repo(tmp_path / "repo")
    code = classify_file(repo / "kernel.cu", cats, NO_MAGIKA)
    assert [m.category for m in code.matches] == ["CN-LITHO"]  # from the // comment
    named = tmp_path / "稀土-notes.txt"
    named.write_text("nothing here\n")
    assert classify_file(named, cats, NO_MAGIKA).matches[0].count == 1  # from the name
    # code outside comments does not count
    (tmp_path / "x.py").write_text("rare_earth = '稀土'\n")
    assert classify_file(tmp_path / "x.py", cats, NO_MAGIKA).matches == ()


def test_automaton_rebuilt_only_when_categories_change() -> None:
    current = [RARE_EARTH]
    clf = Classifier(NO_MAGIKA, categories=lambda: current)
    first = clf.matcher()
    assert clf.matcher() is first
    current = [RARE_EARTH, LITHO]  # a reload returns a new object
    assert clf.matcher() is not first
    assert [c.code for c in clf.matcher().categories] == ["CN-RARE-EARTH", "CN-LITHO"]
    clf.close()


def test_archive_carries_member_matches(tmp_path: Path) -> None:
    doc = C.docx_file(tmp_path / "p.docx", "稀土 sintering")
    bundle = C.zip_of(tmp_path / "out.zip", {"docs/p.docx": doc.read_bytes()})
    a = classify_file(bundle, [RARE_EARTH], NO_MAGIKA)
    assert a.matches and a.matches[0].category == "CN-RARE-EARTH"


def test_english_keywords_need_word_boundaries_chinese_do_not() -> None:
    asr = CategorySpec(code="ASR", pack="p", keywords=("ASR", "speech recognition", "语音识别"))
    m = KeywordMatcher([asr])
    assert m.counts(["LASER and PHASRE"]) == {}
    ev = m.evidence(["ASR: speech-recognition? no. Speech Recognition, yes; (asr)"])[0]
    assert (ev.occurrences, ev.distinct) == (3, 2)
    assert m.evidence(["基于深度学习的语音识别系统"])[0].occurrences == 1  # no spaces in Chinese
    assert m.evidence(["ＡＳＲ 全角"])[0].occurrences == 1
