"""What pack loading reports, and where the shipped packs live: names that the policy
holder and the CLI need without the pack parser (`loader`, which imports the pydantic
pack models: a start that takes its policy from the cache does not)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import UserFacingError

ENGINE_VERSION = (1, 0)
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "policies"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a pack: where it is and what is wrong."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class PolicyError(UserFacingError):
    """The packs do not form a valid policy; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(map(str, self.issues)) or "invalid policy")
