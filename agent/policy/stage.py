"""The policy stage of the pipeline: events in, the same events with decisions out.

It sits after the classifier (file events carry their `Artefact`) and before the store.
Each event is judged by the policy in force at that moment (`PolicyHolder.current`), so
a reload takes effect on the next event; every decision is counted in
`egress_agent_decisions_total{pack,rule,severity,dest_class}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from agent import metrics
from agent.classify.gitprocess import with_repository
from agent.events import Event, FileEvent
from agent.policy.holder import PolicyHolder


class PolicyStage:
    """Callable `Event -> Event` that adds the policy's decisions."""

    def __init__(self, holder: PolicyHolder, approved_git_remotes: Iterable[str] = ()) -> None:
        self.holder = holder
        # `network.approved_git_remotes`: a push there has `repository.approved` true
        self.approved_git_remotes = tuple(approved_git_remotes)

    def __call__(self, event: Event) -> Event:
        policy = self.holder.current
        if isinstance(event, FileEvent):
            decisions = policy.decide_file(event)
            dest_class = ""
        else:
            # a git process's flow names the repository it pushed (cwd, arguments): policy
            # sees `repository.*`, the correlator tells the push story
            event = with_repository(event, self.approved_git_remotes)
            decisions = policy.decide_flow(event)
            dest_class = event.dest_class
        if not decisions:
            return event
        for d in decisions:
            metrics.DECISIONS.labels(d.pack, d.rule_id, str(d.severity), dest_class).inc()
        return dataclasses.replace(event, decisions=(*event.decisions, *decisions))
