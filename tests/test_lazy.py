"""Packages that name their parts lazily (agent/lazy.py) import a part on first use only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import agent.incidents, agent.policy
before = sorted(m for m in ("agent.incidents.service", "agent.policy.holder") if m in sys.modules)
from agent.incidents import Correlator
from agent.policy import PolicyHolder
after = sorted(m for m in ("agent.incidents.service", "agent.policy.holder") if m in sys.modules)
print(json.dumps([before, after, Correlator.__module__, PolicyHolder.__module__]))
"""


def test_a_part_is_imported_when_first_named() -> None:
    before, after, *homes = json.loads(
        subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        ).stdout
    )
    assert before == []  # importing the packages imported neither heavy part
    assert after == homes == ["agent.incidents.service", "agent.policy.holder"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    import agent.incidents

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = agent.incidents.Nope  # type: ignore[attr-defined]
    assert not hasattr(agent.incidents, "Nope")
