"""Category precision with the shipped packs: the false positives of the policy audit
(shared/research/policy-audit.md section 2) are not present categories, and the real
technical texts they were confused with are, with high confidence.

Every text is a realistic paraphrase written for the test; process sheets are composed
(parameters in the ranges public literature gives). Presence is judged the way the
policy judges it: `agent.policy.facts` over the matcher's `CategoryMatch`es, with the
shipped packs' min_count and min_confidence.
"""

from __future__ import annotations

import pytest

from agent.classify.keywords import KeywordMatcher
from agent.config import PoliciesSection
from agent.events import Artefact, CategoryMatch
from agent.policy import Policy, load_configured
from agent.policy.facts import artefact_facts
from tests.policy.makefiles import RARE_EARTH_ZH


@pytest.fixture(scope="module")
def policy() -> Policy:
    p, issues = load_configured(PoliciesSection())
    assert p is not None, issues
    return p


@pytest.fixture(scope="module")
def matcher(policy: Policy) -> KeywordMatcher:
    return KeywordMatcher(policy.categories)


def judge(
    policy: Policy, matcher: KeywordMatcher, text: str, kind: str = "document"
) -> tuple[frozenset[str], dict[str, CategoryMatch]]:
    """(present categories, matches by code) for a text classified as `kind`."""
    matches = matcher.match([text], [kind])
    facts: dict[str, object] = {}
    artefact_facts(facts, Artefact(sha256=None, size=len(text), matches=matches),
                   policy.min_counts, policy.min_confidence)  # fmt: skip
    present = facts["categories"]
    assert isinstance(present, frozenset)
    return present, {m.category: m for m in matches}


# --- the audit's false positives: none is a present category ------------------------
NEWS_RARE_EARTH = (
    "新华社北京3月5日电（记者王磊）记者从工业和信息化部获悉，我国稀土萃取分离技术世界领先，"
    "稀土产业链持续完善，产业集中度进一步提高。"
)


def test_news_sentence_on_rare_earth_separation(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, NEWS_RARE_EARTH)
    assert "CN-CAT-RE-REFINING" not in present
    # 稀土萃取分离 also holds 稀土萃取 and 萃取分离: one phrase, one occurrence
    m = got["CN-CAT-RE-REFINING"]
    assert (m.count, m.distinct, m.confidence) == (1, 1, "low")


MOTOR_DATASHEET_EN = """BLDC servo motor datasheet - model SM-6020
Rated voltage 48 V, rated power 750 W, rated speed 3000 rpm, rated torque 2.4 N·m.
Rotor: sintered NdFeB magnets (grade N42SH); an SmCo magnet rotor is available for
high-temperature versions. Insulation class F, max winding temperature 155 °C.
Ordering information: SM-6020-48-B (brake), SM-6020-48-E (encoder). Warranty 24 months.
"""
MOTOR_DATASHEET_ZH = """无刷伺服电机产品规格书  产品型号 SM-6020
额定电压 48 V，额定功率 750 W，额定转速 3000 rpm，额定转矩 2.4 N·m。
转子采用烧结钕铁硼磁钢（N42SH），高温型号可选钐钴磁钢；绝缘等级 F，绕组最高温度 155 ℃。
订货信息：SM-6020-48-B（带抱闸）。
"""


@pytest.mark.parametrize("text", [MOTOR_DATASHEET_EN, MOTOR_DATASHEET_ZH], ids=["en", "zh"])
def test_motor_datasheet_naming_ndfeb(policy: Policy, matcher: KeywordMatcher, text: str) -> None:
    present, got = judge(policy, matcher, text)
    assert "CN-CAT-RE-REFINING" not in present
    assert got["CN-CAT-RE-REFINING"].distinct >= 2  # two magnet materials, still a datasheet
    assert got["CN-CAT-RE-REFINING"].confidence == "low"


CRISPR_HEK293 = """Protocol: CRISPR-Cas9 knockout of GENE1 in HEK293T cells
Step 1: design two guide RNA (sgRNA) sequences against exon 2 and clone them into
pX459. Step 2: transfect 2 µg plasmid with Lipofectamine 3000 into cells at 70 %
confluence in 6-well plates; incubate at 37 °C, 5 % CO2 for 48 h.
Step 3: select with puromycin 2 µg/mL for 72 h. Step 4: extract genomic DNA, run a T7E1
assay and Sanger sequencing to confirm the edit (基因编辑 efficiency 60-70 %).
"""


def test_crispr_protocol_on_cell_lines_is_not_germline_editing(
    policy: Policy, matcher: KeywordMatcher
) -> None:
    present, got = judge(policy, matcher, CRISPR_HEK293)
    assert "CN-CAT-HUMAN-GERMLINE-EDITING" not in present
    m = got["CN-CAT-HUMAN-GERMLINE-EDITING"]
    assert m.distinct >= 2 and m.confidence == "low"  # a real protocol, but no embryo


BEAMFORMING_5G = """5G NR 大规模天线笔记
Massive MIMO: digital beamforming with a 64T64R array at 3.5 GHz; hybrid 波束形成 for
mmWave at 28 GHz. SSB beam sweeping over 8 beams, CSI-RS for beam refinement, Type II
precoding codebook; SINR gain about 3 dB at the cell edge.
"""


def test_5g_beamforming_notes_are_not_speech_recognition(
    policy: Policy, matcher: KeywordMatcher
) -> None:
    present, got = judge(policy, matcher, BEAMFORMING_5G)
    assert "CN-CAT-086501X-ASR" not in present
    assert got["CN-CAT-086501X-ASR"].distinct == 2 and got["CN-CAT-086501X-ASR"].confidence == "low"


SALES_NOTE = """Sales call notes - Acme Retail, 14 May
Customer asked whether our recommender system and ranking model work with their shop.
Budget approved for Q3. Next: send the proposal and pricing, book a demo with their
CTO, follow up with procurement. Our customers in retail see good results.
"""


def test_sales_note_naming_a_recommender(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, SALES_NOTE)
    assert "CN-CAT-086501X-RECSYS" not in present
    assert got["CN-CAT-086501X-RECSYS"].confidence == "low"


MEETING_NOTES = """Weekly sync, autonomy team
Attendees: Li, Wang, Chen, Zhao.
- path planning demo slipped to next sprint
- point cloud viewer crashes on large files (Chen)
- lidar vendor meeting moved to Friday; 无人机 field test postponed (weather)
Action items: Li books the room; Wang sends the slides.
"""


def test_meeting_notes_keyword_soup(policy: Policy, matcher: KeywordMatcher) -> None:
    present, _ = judge(policy, matcher, MEETING_NOTES)
    for code in ("CN-CAT-203912X-UAV", "CN-CAT-LIDAR", "CN-CAT-HUMAN-GERMLINE-EDITING"):
        assert code not in present


CORE_DATA_NOTES = """iOS notes: persistence with Apple's Core Data framework
Set up the Core Data stack with NSPersistentContainer and load the stores at launch.
Each entity is an NSManagedObject subclass generated from the .xcdatamodeld file; fetch
with NSFetchRequest and a predicate. Core Data keeps important data such as drafts on
the device; lightweight migration handles new attributes.
"""


def test_core_data_framework_is_not_important_data(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, CORE_DATA_NOTES)
    assert "CN-DATA-IMPORTANT" not in present
    assert "CN-DATA-IMPORTANT" not in got  # every term sits next to the framework's names


EULA = """END USER LICENSE AGREEMENT
By installing the Software, Licensee agrees to these terms and conditions. The Software
is subject to the Export Administration Regulations (EAR) and other U.S. export control
laws; it is EAR-controlled and Licensee shall not export or re-export it in violation
of them. Licensee hereby represents that it is not a prohibited party. NO WARRANTY.
"""


def test_eula_export_boilerplate_states_no_eccn(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, EULA)
    assert "US-EAR-ECCN-MARKED" not in present and "US-EAR-ECCN-MARKED" not in got
    # even a mass-market classification stated in the boilerplate stays low
    present, got = judge(policy, matcher, EULA + "The Software is classified ECCN 5D992.c.\n")
    assert "US-EAR-ECCN-MARKED" not in present
    assert got["US-EAR-ECCN-MARKED"].confidence == "low"


LFP_ABSTRACT = """Abstract: Lithium iron phosphate (LiFePO4) is a leading cathode material
for lithium-ion batteries. In this paper we review synthesis routes and carbon coating,
and discuss how compaction density and rate capability trade off. Keywords: LFP cathode,
cathode material, energy storage.
"""


def test_lfp_review_abstract(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, LFP_ABSTRACT)
    assert "CN-CAT-252604X-CATHODE" not in present
    assert got["CN-CAT-252604X-CATHODE"].confidence == "low"


# --- the real technical texts: present, high confidence --------------------------------
def assert_high(policy: Policy, matcher: KeywordMatcher, text: str, code: str, kind: str) -> None:
    present, got = judge(policy, matcher, text, kind)
    assert code in present, got.get(code)
    assert got[code].confidence == "high", got[code]


def test_rare_earth_process_sheet_zh(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, "\n".join(RARE_EARTH_ZH), "CN-CAT-RE-REFINING", "document")


RE_PROCESS_EN = """Rare earth solvent extraction - Pr/Nd separation line, process sheet
Extractant: P507 in kerosene (1.5 mol/L), saponification 36 %. Cascade extraction with
60 stages of mixer-settler: 40 extraction stages and 20 scrubbing stages, O/A ratio 1.8,
feed 1.2 mol/L REO at pH 2.5. Stripping with 4 mol/L HCl; raffinate La-Ce to precipitation.
"""


def test_rare_earth_process_sheet_en(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, RE_PROCESS_EN, "CN-CAT-RE-REFINING", "document")


GERMLINE_PROTOCOL = """Protocol (composed): gene editing of human zygotes
Step 1: zygotes from IVF are collected 16-18 h after insemination. Step 2: microinjection
of Cas9 protein (50 ng/µL) with guide RNA into the cytoplasm. Step 3: embryos are
cultured to blastocyst at 37 °C, 5 % CO2, 5 % O2; off-target sites checked by sequencing.
Step 4: embryo transfer for implantation and reproduction.
"""


def test_germline_editing_with_embryo_context(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, GERMLINE_PROTOCOL, "CN-CAT-HUMAN-GERMLINE-EDITING", "document")


ASR_DESIGN = """Speech recognition engine - design notes
Acoustic model: 12-layer conformer encoder with CTC and attention decoder, 80-dim fbank
features at 16 kHz; language model fused by beam search (beam 10). Far-field input from
a 6-mic microphone array with beamforming; wake word detection before decoding.
WER 5.2 % on the Mandarin test set, real-time factor 0.08.
"""


def test_speech_recognition_design(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, ASR_DESIGN, "CN-CAT-086501X-ASR", "document")


RECSYS_DESIGN = """Recommender system design (feed v3)
Candidate retrieval: two-tower model, user embedding and item embedding of dim 64,
in-batch negative sampling, FAISS IVF index, recall@100 = 0.41. Ranking model: DeepFM
with feature crossing over 120 features for CTR prediction; offline evaluation AUC 0.781,
NDCG@10 0.37; learning rate 1e-3, batch size 4096.
"""


def test_recommender_design_document_en(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, RECSYS_DESIGN, "CN-CAT-086501X-RECSYS", "document")


LFP_SHEET_EN = """LFP cathode process sheet (composed)
Lithium iron phosphate (LiFePO4) cathode material, solid-state route.
Step 1: mix iron phosphate and lithium carbonate (Li/Fe 1.03) with glucose 8 wt% in a
sand mill to D50 0.4 µm. Step 2: spray drying, inlet 180 °C.
Step 3: sintering in a roller kiln at 760 °C for 10 h under nitrogen atmosphere.
Results: compaction density 2.62 g/cm³ (220 MPa); specific capacity 162 mAh/g at 0.1C;
first coulombic efficiency 97.5 %.
"""
LFP_SHEET_ZH = """磷酸铁锂正极材料工艺单（组合示例）
步骤1：磷酸铁与碳酸锂按 Li/Fe=1.03 配料，加入葡萄糖 8 wt%，砂磨至 D50 0.4 μm。
步骤2：喷雾干燥，进风温度 180 ℃。步骤3：辊道窑氮气气氛 760 ℃ 烧结 10 h。
检测结果：压实密度 2.60 g/cm³（220 MPa），克容量 ≥162 mAh/g，首次库伦效率 97.2%。
"""


@pytest.mark.parametrize("text", [LFP_SHEET_EN, LFP_SHEET_ZH], ids=["en", "zh"])
def test_lfp_process_sheet_above_the_legal_thresholds(
    policy: Policy, matcher: KeywordMatcher, text: str
) -> None:
    assert_high(policy, matcher, text, "CN-CAT-252604X-CATHODE", "document")


def test_lfp_sheet_below_a_threshold_is_low(policy: Policy, matcher: KeywordMatcher) -> None:
    below = LFP_SHEET_EN.replace("2.62 g/cm³", "2.31 g/cm³").replace("162 mAh/g", "151 mAh/g")
    present, got = judge(policy, matcher, below)
    assert "CN-CAT-252604X-CATHODE" not in present
    assert got["CN-CAT-252604X-CATHODE"].confidence == "low"
    # one quantity below is enough: the catalogue states both
    half = LFP_SHEET_ZH.replace("≥162 mAh/g", "155 mAh/g")
    assert "CN-CAT-252604X-CATHODE" not in judge(policy, matcher, half)[0]


def test_threshold_units_are_normalised(policy: Policy, matcher: KeywordMatcher) -> None:
    g_cc = LFP_SHEET_EN.replace("2.62 g/cm³", "2.62 g/cc")
    assert_high(policy, matcher, g_cc, "CN-CAT-252604X-CATHODE", "document")
    below_g_cc = LFP_SHEET_EN.replace("2.62 g/cm³", "2.40 g/cc")
    assert "CN-CAT-252604X-CATHODE" not in judge(policy, matcher, below_g_cc)[0]
    # a value in another unit right after the words (the pressure) is not the density
    assert_high(
        policy,
        matcher,
        LFP_SHEET_EN.replace("2.62 g/cm³ (220 MPa)", "(at 220 MPa) 2.62 g/cm3"),
        "CN-CAT-252604X-CATHODE",
        "document",
    )


BRINE_SPEC_EN = """Specification: lithium extraction from salt-lake brine (DLE route)
Direct lithium extraction. Feed brine Li 0.25 g/L, Mg/Li ratio 45. Aluminium-based
lithium adsorbent in an adsorption column at 25 °C, 2 BV/h; desorption with fresh
water, eluate Li 1.1 g/L.
Nanofiltration and reverse osmosis concentrate the eluate to Li 15 g/L; lithium carbonate
precipitation with Na2CO3 at 90 °C; battery grade, purity 99.5 %.
"""


def test_brine_lithium_specification_en(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, BRINE_SPEC_EN, "CN-CAT-083201X-LITHIUM", "document")


CELL_PROCESS = """High-energy-density cell manufacturing - pouch cell line (composed)
NCM811 / SiC lithium-ion cell, gravimetric energy density 310 Wh/kg at 0.33C.
Electrode coating at 25 mg/cm2 areal loading, calendering to 3.6 g/cm3, electrolyte
filling 2.2 g/Ah, formation at 45 °C and 0.3 MPa, cycle life 1000 cycles.
"""


def test_battery_production_above_300_wh_kg(policy: Policy, matcher: KeywordMatcher) -> None:
    assert_high(policy, matcher, CELL_PROCESS, "CN-DU-3E901-BATTERY", "document")
    below = CELL_PROCESS.replace("310 Wh/kg", "255 Wh/kg")
    present, got = judge(policy, matcher, below)
    assert "CN-DU-3E901-BATTERY" not in present and got["CN-DU-3E901-BATTERY"].confidence == "low"


ECCN_MARKED = """EXPORT CONTROLLED - ECCN 3E001
This technical data is subject to the Export Administration Regulations.
Process recipe: epitaxy of the GaN layer at 1050 °C and 20 kPa, V/III ratio 1500,
growth rate 2 µm/h; anneal at 850 °C for 30 min.
"""


def test_document_marked_with_an_eccn(policy: Policy, matcher: KeywordMatcher) -> None:
    present, got = judge(policy, matcher, ECCN_MARKED)
    assert "US-EAR-ECCN-MARKED" in present and got["US-EAR-ECCN-MARKED"].confidence != "low"


LMFP_SHEET = """LMFP cathode process sheet (composed)
Lithium manganese iron phosphate (LiMn0.6Fe0.4PO4) cathode material, solid-state route.
Step 1: mix manganese and iron phosphate precursor with lithium carbonate and glucose in
a sand mill to D50 0.5 µm. Step 2: spray drying, inlet 190 °C. Step 3: sintering in a
roller kiln at 740 °C for 12 h under nitrogen atmosphere.
Results: compaction density 2.42 g/cm³; specific capacity 157 mAh/g at 0.1C.
"""


def test_lmfp_has_its_own_thresholds(policy: Policy, matcher: KeywordMatcher) -> None:
    """2.42 g/cm3 and 157 mAh/g are below the LFP values but above LMFP's (2.38, 155)."""
    assert_high(policy, matcher, LMFP_SHEET, "CN-CAT-252604X-CATHODE", "document")
    below = LMFP_SHEET.replace("2.42 g/cm³", "2.30 g/cm³")
    assert "CN-CAT-252604X-CATHODE" not in judge(policy, matcher, below)[0]


LFP_POWDER_TDS = """Technical data sheet - LFP cathode powder, grade P-255 (paraphrased)
Typical properties: compaction density 2.61 g/cm3; specific capacity 161 mAh/g at 0.1C;
carbon 1.2 %; D50 1.0 um; moisture 700 ppm. Applications: EV and storage cells.
Packaging: 500 kg bags under nitrogen; shelf life 12 months. Contact your sales
representative for samples.
"""


def test_supplier_datasheet_above_the_thresholds_stays_low(
    policy: Policy, matcher: KeywordMatcher
) -> None:
    """Properties of a product, not how to make it: the values meet the legal limits,
    and it is still a datasheet."""
    present, got = judge(policy, matcher, LFP_POWDER_TDS)
    assert "CN-CAT-252604X-CATHODE" not in present
    assert got["CN-CAT-252604X-CATHODE"].confidence == "low"
