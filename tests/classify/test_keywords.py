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
    patterns=(r"\b[1-9]\d{16}[\dXx]\b",),
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


@settings(max_examples=200, deadline=None)
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


# --- distinct terms, leftmost-longest, corroboration, exclusions, thresholds ----------
REFINING = CategorySpec(
    code="RE",
    pack="p",
    keywords=("稀土萃取分离", "稀土萃取", "萃取分离", "solvent extraction"),
    supporting=("P507", "反萃"),
    min_count=2,
)


def test_overlapping_keywords_of_one_phrase_count_once() -> None:
    m = KeywordMatcher([REFINING])
    ev = m.evidence(["稀土萃取分离"])[0]
    assert (ev.occurrences, ev.distinct) == (1, 1)
    ev = m.evidence(["稀土萃取分离；稀土萃取；萃取分离 稀土萃取分离"])[0]
    assert (ev.occurrences, ev.distinct) == (4, 3)


def test_corroboration_counts_different_evidence_within_the_window() -> None:
    spec = CategorySpec(code="RE", pack="p", keywords=("solvent extraction",), window=40)
    m = KeywordMatcher([spec])
    near = "solvent extraction at 25 °C and pH 2.5, step 1 in a mixer-settler"
    assert m.evidence([near])[0].corroboration == 4  # unit, pH, step, equipment
    far = "solvent extraction" + " filler" * 20 + " at 25 °C and pH 2.5"
    assert m.evidence([far])[0].corroboration == 0
    # the same evidence twice is one piece of evidence
    assert m.evidence(["solvent extraction 25 °C 30 °C 35 °C"])[0].corroboration == 1


def test_confidence_levels_and_genre_markers() -> None:
    spec = CategorySpec(code="RE", pack="p", keywords=("solvent extraction",))
    m = KeywordMatcher([spec])

    def conf(text: str) -> str:
        return m.match([text], ["document"])[0].confidence

    assert conf("solvent extraction is interesting") == "low"
    assert conf("solvent extraction at 25 °C") == "medium"
    assert conf("solvent extraction at 25 °C, 0.2 MPa, step 1: mixer-settler") == "high"
    assert conf("据报道 solvent extraction at 25 °C, 0.2 MPa, step 1: mixer-settler") == "medium"
    press = "press release: reuters reported our world-leading solvent extraction at 25 °C"
    assert conf(press + ", 0.2 MPa, step 1: mixer-settler") == "low"


def test_requires_context_and_excludes() -> None:
    germ = CategorySpec(
        code="G", pack="p", keywords=("gene editing",), requires_context=("embryo", "胚胎")
    )
    data = CategorySpec(
        code="D", pack="p", keywords=("core data", "重要数据"), excludes=("NSManagedObject",)
    )
    m = KeywordMatcher([germ, data])
    step = "gene editing at 37 °C, step 1 microinjection 50 ng/µL"
    assert m.match([step], ["document"])[0].confidence == "low"
    assert m.match([step + " of human 胚胎"], ["document"])[0].confidence == "high"
    assert m.match(["Core Data: subclass NSManagedObject"], ["document"]) == ()
    far = "core data" + " ." * 400 + " NSManagedObject"
    assert m.match([far], ["document"])[0].distinct == 1


def test_thresholds_read_from_the_text() -> None:
    from agent.categories import Threshold

    spec = CategorySpec(
        code="C",
        pack="p",
        keywords=("LiFePO4",),
        thresholds=(
            Threshold("compaction_density", "g/cm3", "ge", 2.58),
            Threshold("specific_capacity", "mah/g", "ge", 160),
        ),
    )
    m = KeywordMatcher([spec])
    base = "LiFePO4 sintered at 760 °C. "
    ev = m.evidence([base + "Compaction density: 2.60 g/cc; 克容量 ≥162 mAh/g"])[0]
    assert (ev.above, ev.below) == (2, 0)
    ev = m.evidence([base + "压实密度 2.45 g/cm³, specific capacity 165 mAh/g"])[0]
    assert (ev.above, ev.below) == (1, 1)
    assert m.match([base + "压实密度 2.45 g/cm³"], ["document"])[0].confidence == "low"
    assert m.match([base + "压实密度 2.65 g/cm³"], ["document"])[0].confidence == "high"
    # no value stated: the thresholds neither raise nor lower
    ev = m.evidence([base + "compaction density matters"])[0]
    assert (ev.above, ev.below) == (0, 0)


def test_evidence_survives_the_classifier_cache_as_one_number() -> None:
    from agent.classify.corroboration import Evidence

    m = KeywordMatcher([REFINING])
    text, name = "稀土萃取分离 P507 反萃 25 °C 溶剂", "solvent extraction.docx"
    packed = m.counts([text])[0] + m.counts([name])[0]  # what the classifier adds up
    ev = Evidence.unpack(packed)
    assert ev.occurrences == 2 and ev.distinct == 2 and ev.corroboration == 3
    assert Evidence.unpack(Evidence(5, 4, 3, 2, 1, 1, 0).pack()) == Evidence(5, 4, 3, 2, 1, 1, 0)


def test_category_key_covers_the_confidence_fields() -> None:
    from dataclasses import replace

    from agent.classify.keywords import categories_key

    base = categories_key([REFINING])
    for change in (
        {"supporting": ("x",)},
        {"requires_context": ("x",)},
        {"excludes": ("x",)},
        {"min_confidence": "high"},
        {"window": 50},
        {"corroborate": False},
    ):
        assert categories_key([replace(REFINING, **change)]) != base, change


_ALPHABET = st.sampled_from(
    ["稀土萃取分离", "稀土", "solvent extraction", " 25 °C", " 2.6 g/cm3", " step 1", "P507",
     " LiFePO4", "压实密度", " ", "\n", "x", "9", "据报道", "mixer-settler", "(", ")"]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(_ALPHABET, max_size=4000), st.integers(1, 50))
def test_matching_is_bounded_on_dense_random_input(parts: list[str], repeat: int) -> None:
    """Dense keyword and evidence soup, up to ~1.5 MB: the work is capped per text
    (primary hits checked, evidence per kind, values per quantity), and the evidence
    stays within its caps whatever the input."""
    from agent.categories import Threshold

    spec = CategorySpec(
        code="RE",
        pack="p",
        keywords=("稀土萃取分离", "稀土萃取", "solvent extraction", "LiFePO4"),
        supporting=("P507",),
        thresholds=(Threshold("compaction_density", "g/cm3", "ge", 2.58),),
    )
    text = "".join(parts) * repeat
    m = KeywordMatcher([spec])
    ev = m.evidence([text]).get(0)
    if ev is not None:
        assert ev.distinct <= 4 and ev.occurrences >= ev.distinct
        assert ev.corroboration <= 16 and ev.above + ev.below <= 1
        assert m.match([text], ["document"])[0].confidence in ("low", "medium", "high")


def test_ignored_genres_and_english_plurals() -> None:
    goods = CategorySpec(
        code="GOODS", pack="p", keywords=("gallium nitride wafer",), ignore_genres=("datasheet",)
    )
    know_how = CategorySpec(code="TECH", pack="p", keywords=("gallium nitride wafer",))
    m = KeywordMatcher([goods, know_how])
    sheet = "Product specification: gallium nitride wafers, 100 mm, 500 um thick, grown at 1050 °C"
    got = {x.category: x.confidence for x in m.match([sheet], ["document"])}
    assert got == {"GOODS": "high", "TECH": "medium"}  # one datasheet marker costs TECH a level
    news = "Xinhua: exports of gallium nitride wafers (100 mm, 500 um) announced"
    assert m.match([news], ["document"])[0].confidence == "low"  # news is not ignored
    assert m.counts(["gallium nitride wafersx"]) == {}  # a plural s, not any letter


def test_huge_dense_input_is_bounded_in_time_and_memory() -> None:
    """4 MB where every few characters are a term or evidence, with the widest window:
    the caps (hits kept, primaries checked, evidence positions visited) bound the work;
    it takes about 2 s of CPU here; the bound is generous so that it cannot flake."""
    import time

    from agent.categories import Threshold

    specs = [
        CategorySpec(
            code=f"C{i}",
            pack="p",
            keywords=("稀土萃取", "solvent extraction", "mm"),
            supporting=("P507",),
            thresholds=(Threshold("compaction_density", "g/cm3", "ge", 2.58),),
            window=5000,
        )
        for i in range(8)
    ]
    unit = "稀土萃取 1 mm solvent extraction 2 mm P507 压实密度 2.6 g/cm3 "
    text = unit * (4_000_000 // len(unit))
    m = KeywordMatcher(specs)
    started = time.process_time()
    ev = m.evidence([text])
    assert time.process_time() - started < 60
    assert all(e.occurrences <= 3 * 100_000 and e.above == 1 for e in ev.values())


def test_basis_says_why() -> None:
    germ = CategorySpec(
        code="G", pack="p", keywords=("gene editing",), requires_context=("embryo", "胚胎")
    )
    (got,) = KeywordMatcher([germ]).match(["Abstract: gene editing at 37 °C"], ["document"])
    assert got.confidence == "low"
    assert got.basis == (
        "1 piece of evidence near the terms; no required context (embryo, 胚胎...); "
        "1 news/marketing/datasheet/licence/abstract marker(s)"
    )


def test_supporting_patterns() -> None:
    spec = CategorySpec(
        code="R", pack="p", keywords=("ranking model",), supporting_patterns=(r"(?i)ndcg@\d+",)
    )
    m = KeywordMatcher([spec])
    assert m.evidence(["ranking model: NDCG@10 and ndcg@5"])[0].corroboration == 2
    assert m.evidence(["ranking model: NDCG"])[0].corroboration == 0
