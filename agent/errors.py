"""The agent's own errors: one root, so a caller can tell them from bugs by type.

Every error the agent raises on purpose derives from `AgentError`; anything else that
escapes is a bug (or a library's error not yet translated at its seam). The CLI and the
daemon catch by these types, never by comparing class names. The two branches say who
can act:

- `UserFacingError`: something a user gave is wrong or missing (a config key, a policy
  pack, a manifest, a key file, an export file, a capture). Its message is one sentence
  naming the file, key or line and what to do, and the CLI prints it as it is.
- `AgentError` itself, for the rest: internal conditions that are logged with context
  and counted, like a parser refusing hostile input.

Error classes stay in the module that raises them (next to the code a reader needs to
understand them); this module only gives them a common ancestry.
"""

from __future__ import annotations


class AgentError(Exception):
    """An error the agent raises on purpose (not a bug)."""


class UserFacingError(AgentError):
    """A problem in what a user gave the agent; the message is the one line they read."""
