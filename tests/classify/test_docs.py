"""Every classify.* key is documented, and the tag details policy relies on are produced."""

from __future__ import annotations

from pathlib import Path

from agent.config import ClassifySection

REPO = Path(__file__).resolve().parents[2]


def test_every_classify_key_is_documented() -> None:
    reference = (REPO / "README.md").read_text()
    for key in ClassifySection.model_fields:
        assert f"`classify.{key}`" in reference, f"classify.{key} is not in README.md"


def test_promised_detail_keys_are_in_the_docs() -> None:
    """agent/categories.py promises these details; docs/classifier.md lists them too."""
    doc = (REPO / "docs" / "classifier.md").read_text()
    for key in ("format", "parameters", "tensors", "dtype", "columns", "rows", "language"):
        assert f"`{key}`" in doc
    for key in ("git_remote", "git_commit", "members", "nested_kinds", "chars", "type"):
        assert f"`{key}`" in doc
