"""Which known service a destination name belongs to: Google Drive, GitHub, ChatGPT…

A country says where a flow went; for an R&D centre the service matters as much — a
personal cloud drive, a public code host, web mail, an AI assistant where code is pasted.
`ServiceIndex` maps destination names (SNI, HTTP Host, DNS) to a `Service` (name and
category) from the data-only list shipped in `agent/data/services.yaml`, plus a site's
own file (`network.services_file`), whose entries win for the same domain.

Lookups run on the capture path's export step, so they are a walk down a label trie
built once at start (one dict probe per label, glob labels only where the data has
them) and the answers are cached per name like the destination cache. A bad data file
is one `ServicesError` line naming the file and line.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import UserFacingError
from agent.policy._yaml import item_line, key_line, load_marked

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "services.yaml"
# the metric label and policy fact take only these values: a bounded set
CATEGORIES = (
    "cloud_storage",
    "code_hosting",
    "webmail",
    "file_transfer",
    "ai_assistant",
    "messaging",
)
SCHEMA = 1
_CACHE_SIZE = 65536
_MAX_NAME = 253  # longest DNS name; anything longer is not a host name
_MAX_SERVICE = 64


class ServicesError(UserFacingError, ValueError):
    """A services file cannot be used: the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # e.g. "Google Drive"
    category: str  # one of CATEGORIES


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    globs: dict[str, _Node] = field(default_factory=dict)  # labels holding a "*"
    service: Service | None = None


class ServiceIndex:
    """Domain patterns → `Service`; `lookup(name)` gives the longest match or None."""

    def __init__(self, revision: str = "", sources: tuple[str, ...] = ()) -> None:
        self._root = _Node()
        self._cache: dict[str, Service | None] = {}
        self.revision = revision  # of the shipped list
        self.sources = sources  # files the entries came from
        self.size = 0

    def add(self, pattern: str, service: Service) -> None:
        """Register `pattern` (a domain, "*" labels allowed); a later add wins."""
        node = self._root
        for label in reversed(_labels(pattern)):
            table = node.globs if "*" in label else node.children
            node = table.setdefault(label, _Node())
        if node.service is None:
            self.size += 1
        node.service = service
        self._cache.clear()

    def lookup(self, name: str | None) -> Service | None:
        if not name:
            return None
        hit = self._cache.get(name, _MISSING)
        if hit is _MISSING:
            hit = self._match(name)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[name] = hit
        return hit  # type: ignore[return-value]

    def _match(self, name: str) -> Service | None:
        if len(name) > _MAX_NAME:
            return None
        labels = _labels(name)
        best: tuple[int, Service] | None = None
        # depth-first over the trie: each trie node is met at one depth only, so the
        # work is bounded by the name's labels times the patterns, never exponential
        stack: list[tuple[_Node, int]] = [(self._root, len(labels))]
        while stack:
            node, i = stack.pop()
            depth = len(labels) - i
            if node.service is not None and depth > 0 and (best is None or depth > best[0]):
                best = (depth, node.service)
            if i == 0:
                continue
            label = labels[i - 1]
            child = node.children.get(label)
            if child is not None:
                stack.append((child, i - 1))
            for pattern, sub in node.globs.items():
                if pattern == "*" or fnmatch.fnmatchcase(label, pattern):
                    stack.append((sub, i - 1))
        return best[1] if best else None


_MISSING = object()


def _labels(name: str) -> list[str]:
    return name.strip().rstrip(".").lower().split(".")


def load(path: Path, index: ServiceIndex | None = None) -> ServiceIndex:
    """Read one services file into `index` (a new one when None); raises ServicesError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ServicesError(f"{path}: cannot read services file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ServicesError(f"{path}:1: not UTF-8 text") from None
    doc, problems = load_marked(text)
    if problems:
        raise _error(path, problems[0].line, problems[0].message)
    if not isinstance(doc, dict):
        raise _error(path, 1, "expected a mapping with 'schema' and 'services'")
    if doc.get("schema", SCHEMA) != SCHEMA:
        raise _error(path, key_line(doc, "schema"), f"schema must be {SCHEMA}")
    revision = str(doc.get("revision") or "")
    unknown = set(doc) - {"schema", "revision", "services"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _error(path, key_line(doc, key), f"unknown key {key!r}")
    entries = doc.get("services")
    if not isinstance(entries, list):
        raise _error(path, key_line(doc, "services"), "'services' must be a list")
    if index is None:
        index = ServiceIndex(revision)
    elif not index.revision:
        index.revision = revision
    for n, entry in enumerate(entries):
        for pattern, service in _entry(path, item_line(entries, n), entry):
            index.add(pattern, service)
    index.sources = (*index.sources, str(path))
    return index


def _entry(path: Path, line: int, entry: Any) -> list[tuple[str, Service]]:
    if not isinstance(entry, dict):
        raise _error(path, line, "each service must be a mapping with service, category, domains")
    unknown = set(entry) - {"service", "category", "domains"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _error(path, key_line(entry, key), f"unknown key {key!r}")
    name = entry.get("service")
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_SERVICE:
        raise _error(path, key_line(entry, "service"), "'service' must be a short name")
    category = entry.get("category")
    if category not in CATEGORIES:
        raise _error(
            path,
            key_line(entry, "category"),
            f"category {category!r} is not one of {', '.join(CATEGORIES)}",
        )
    domains = entry.get("domains")
    if not isinstance(domains, list) or not domains:
        raise _error(path, key_line(entry, "domains"), "'domains' must be a non-empty list")
    service = Service(name.strip(), category)
    out = []
    for i, d in enumerate(domains):
        problem = _bad_domain(d)
        if problem:
            raise _error(path, item_line(domains, i), problem)
        out.append((d, service))
    return out


def _bad_domain(d: Any) -> str | None:
    if not isinstance(d, str) or not d.strip():
        return f"domain {d!r} must be a host name"
    labels = _labels(d)
    if len(d) > _MAX_NAME or any(not label for label in labels):
        return f"domain {d!r} is not a host name"
    if all("*" in label for label in labels):
        return f"domain {d!r} matches everything"
    if any(ch.isspace() or ch in "/:@?[]" for ch in d):
        return f"domain {d!r} is not a host name (no scheme, path or port)"
    return None


def _error(path: Path, line: int, message: str) -> ServicesError:
    return ServicesError(f"{path}:{line}: {message}")


def build(site_file: Path | None = None) -> ServiceIndex:
    """The shipped list, then the site's file over it."""
    index = load(SHIPPED)
    if site_file is not None:
        load(site_file, index)
    return index
