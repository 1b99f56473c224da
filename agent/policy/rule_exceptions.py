"""Rule exceptions: the data a pack writes under a rule's `exceptions:`, and its match.

An exception names who or what a rule does not apply to (destination networks and host
globs, users, processes, paths), as data a reviewer reads without the engine, in the
manner of Falco's structured exceptions. Kept apart from `model` (the compiled policy and
its decision function), which only asks `matches`; `rules` builds these from the pack.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RuleException:
    name: str
    networks: tuple[Network, ...] = ()
    hosts: tuple[str, ...] = ()  # globs on the destination name / SNI
    users: tuple[str, ...] = ()
    processes: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """True when every field this exception sets matches the facts."""
        dest = _ip_in(facts.get("dst_ip"), self.networks) or self._host_in(facts)
        if (self.networks or self.hosts) and not dest:
            return False
        if self.users and facts.get("user") not in self.users:
            return False
        if self.processes and not _glob_any(facts.get("process.exe"), self.processes):
            return False
        return not self.paths or _glob_any(facts.get("path"), self.paths)

    def _host_in(self, facts: Mapping[str, Any]) -> bool:
        """Host names compare case-insensitively, without a trailing dot (DNS form)."""
        for key in ("name", "sni"):
            value = facts.get(key)
            if isinstance(value, str) and _glob_any(value.lower().rstrip("."), self.hosts):
                return True
        return False


def _glob_any(value: Any, patterns: tuple[str, ...]) -> bool:
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _ip_in(value: Any, nets: tuple[Network, ...]) -> bool:
    if not nets or not isinstance(value, str):
        return False
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)
