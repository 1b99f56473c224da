"""Policy: YAML packs of export-control categories and rules, and the decisions they make.

Pipeline position: after the classifier, before the store. `PolicyHolder` keeps the
policy in force (and reloads it), `PolicyStage` judges events, `load_policy` turns pack
files into a `Policy` or a list of `Issue`s with file and line. The pack format is
described in docs/policy.md.
"""

from typing import TYPE_CHECKING

from agent.lazy import lazy_attributes
from agent.policy.issues import ENGINE_VERSION, SHIPPED_DIR, Issue, PolicyError
from agent.policy.model import EMPTY_POLICY, PackInfo, Policy, Rule

if TYPE_CHECKING:
    from agent.policy.build import load_policy
    from agent.policy.cache import load_configured
    from agent.policy.holder import PolicyHolder, attach_policy
    from agent.policy.stage import PolicyStage

# the holder and the stage keep policy versions in the store (SQLAlchemy, 0.15 s to
# import): loaded when first named, so that `scan` and `policy check` reading packs
# through `agent.policy.build` do not pay for them; and the pack parser (`build`, with
# the pydantic pack models) is loaded only to read packs, which a daemon whose compiled
# policy is cached (agent/policy/cache.py) does not do at start
_LAZY = {
    "load_policy": "build",
    "PolicyHolder": "holder",
    "attach_policy": "holder",
    "load_configured": "cache",
    "PolicyStage": "stage",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "EMPTY_POLICY",
    "ENGINE_VERSION",
    "SHIPPED_DIR",
    "Issue",
    "PackInfo",
    "Policy",
    "PolicyError",
    "PolicyHolder",
    "PolicyStage",
    "Rule",
    "attach_policy",
    "load_configured",
    "load_policy",
]
