"""The classifier: what each artefact is, its fingerprint, its keywords and its lineage.

It sits between the sensors and policy: the pipeline stage (`stage.ClassifyStage`)
attaches an `Artefact` to file events, and `egress-agent scan` / `policy explain` call
`classify_file` directly. Layout: `tiers` (signatures → parsers → magika) over
the format modules (`weights`, `datasets`, `source`, `archives`, `documents`,
`engineering`, `secrets`), `keywords` (categories in, matches out), `hashing` (SHA-256
and the persistent cache), `lineage`, and `classifier` (the path-level shell).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from agent.categories import CategorySpec
    from agent.classify.base import ParseError
    from agent.classify.classifier import Classifier
    from agent.config import ClassifySection, Settings
    from agent.events import Artefact

# the classifier and its parsers load when first named: `scan` imports the hash cache
# (`agent.classify.hashing`) on a thread, to create a new one while the main thread
# imports the classifier (0.1 s), and the package must not import all of it first
_LAZY = {"Classifier": "classifier", "ParseError": "base"}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["Classifier", "ParseError", "classify_file"]


def classify_file(
    path: Path | str,
    categories: Sequence[CategorySpec] = (),
    settings: ClassifySection | Settings | None = None,
) -> Artefact:
    """Classify one file (or SavedModel directory) now, without any persistent cache.

    `settings` is the classify section (the whole Settings is accepted too). Never
    raises for anything the file can do: unreadable, special or malformed files come
    back with `skipped` set.
    """
    from agent.classify.classifier import Classifier
    from agent.config import Settings

    if isinstance(settings, Settings):
        settings = settings.classify
    cats = tuple(categories)
    classifier = Classifier(settings, cache=None, categories=lambda: cats)
    try:
        return classifier.classify_path(os.fspath(path))
    finally:
        classifier.close()
