"""A compiled policy kept between starts, keyed by everything that built it.

Reading, validating and compiling the packs (YAML with line marks, the pydantic pack
models, rule compilation and rule tests) costs a start about 0.09 s of CPU, imports
included, and gives the same `Policy` every time the same files meet the same code. So a
policy that loaded without issues is pickled into the state directory beside the store,
under a key over: the content of every file in the pack paths (a directory's whole
listing, so an added, removed or renamed pack changes it), the disabled packs, the
config's pack parameters, and the agent's own code (version, and the path, size and
mtime of each module that builds a policy: a rule compiler changed by an upgrade or an
edit never meets an old pickle). Any mismatch, unreadable or foreign file is a miss
and the packs are read as before: the cache is a shortcut, never a second source of
truth.

The file is trusted like the store and the incident signing key beside it: it is read
only when it belongs to this process's user and nobody else can write it (it is written
0600). That is why this module may use pickle, which the project bans elsewhere (files a
sensor reads are untrusted; this one only the agent writes): whoever can write it as the
agent's user can already replace the signing key and the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle  # noqa: TID251 - our own file, owner- and mode-checked (see above)
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import agent
from agent.policy.issues import SHIPPED_DIR, Issue
from agent.policy.model import Policy

if TYPE_CHECKING:
    from agent.config import PoliciesSection

log = logging.getLogger(__name__)

CACHE_NAME = "policy-cache.pickle"
_AGENT_DIR = Path(agent.__file__).resolve().parent


# the agent's modules that build a policy or define what it holds (every `agent` module
# that `agent.policy.build` imports: tests/policy/test_cache.py checks the list)
CODE = (
    "__init__.py",
    "categories.py",
    "errors.py",
    "events.py",
    "lazy.py",
    "linear_regex.py",
    "validators.py",
    "policy",
)


def code_fingerprint(package_dir: Path = _AGENT_DIR, parts: Sequence[str] = CODE) -> str:
    """The agent's version and the path, size and mtime of each module in `parts` (a
    directory: its modules) — stat only, well under a millisecond: what compiles a
    policy, and the classes its pickle is rebuilt into."""
    digest = hashlib.sha256(agent.__version__.encode())
    for part in parts:
        top = package_dir / part
        paths = sorted(top.glob("*.py")) if top.is_dir() else [top]
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                digest.update(f"{part}\0missing\n".encode())
                continue
            rel = path.relative_to(package_dir)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _feed_path(digest: Any, path: Path) -> None:
    """A pack path's content into the key: a file's bytes; a directory's every entry by
    name, with the bytes of its regular files; a missing or unreadable path as such."""
    digest.update(f"path\0{path}\0".encode())
    try:
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                digest.update(f"entry\0{entry.name}\0".encode())
                if entry.is_file():
                    digest.update(entry.read_bytes())
        elif path.is_file():
            digest.update(b"file\0" + path.read_bytes())
        else:
            digest.update(b"missing\0")
    except OSError as e:
        digest.update(f"error\0{e}\0".encode())


def cache_key(
    shipped: Sequence[Path],
    site: Sequence[Path],
    disabled: Iterable[str],
    parameters: Mapping[str, Any],
    code: str,
) -> str:
    """sha256 over everything `load_policy` reads or is given, and the code that reads it."""
    digest = hashlib.sha256(f"code\0{code}\0".encode())
    for label, paths in (("shipped", shipped), ("site", site)):
        digest.update(f"{label}\0{len(paths)}\0".encode())
        for p in paths:
            _feed_path(digest, Path(p))
    digest.update(json.dumps(sorted(disabled)).encode())
    digest.update(json.dumps(dict(parameters), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _trusted(st: os.stat_result) -> bool:
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def load_cached(directory: Path, key: str) -> Policy | None:
    """The policy stored under `key`, with `loaded_at` now; None on any miss."""
    path = directory / CACHE_NAME
    try:
        with path.open("rb") as fh:
            if not _trusted(os.fstat(fh.fileno())):
                log.warning("ignoring %s: not this user's, or writable by others", path)
                return None
            stored_key, policy = pickle.load(fh)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated, from another Python, a class gone: read the packs
        log.debug("policy cache %s unreadable: %s", path, e)
        return None
    if stored_key != key or not isinstance(policy, Policy):
        return None
    object.__setattr__(policy, "loaded_at", time.time())  # a fresh object: ours alone
    return policy


def store_cached(directory: Path, key: str, policy: Policy) -> None:
    """Keep `policy` under `key` (atomically, 0600); a failure only costs the next start."""
    path = directory / CACHE_NAME
    tmp = path.with_name(f".{CACHE_NAME}.{os.getpid()}")
    try:
        data = pickle.dumps((key, policy), protocol=pickle.HIGHEST_PROTOCOL)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except Exception as e:  # an unpicklable policy or a full disk: not worth failing for
        log.debug("cannot keep the policy in %s: %s", path, e)
        try:
            tmp.unlink()
        except OSError:
            pass


def load_configured(
    section: PoliciesSection,
    shipped_dir: Path = SHIPPED_DIR,
    extra_site: Sequence[Path] = (),
    cache_dir: Path | None = None,
) -> tuple[Policy | None, list[Issue]]:
    """Load what the config names (rule tests included): (policy, []) or (None, issues).

    With `cache_dir`, a policy compiled before from the same files, parameters and code
    is taken from there, and a new one that loads is kept. (Here, not in the holder,
    which imports SQLAlchemy: `scan` reads the packs through this too.)"""
    shipped = [shipped_dir] if section.builtin else []
    site = [*section.paths, *extra_site]
    parameters = section.pack_parameters()
    key = None
    if cache_dir is not None:
        key = cache_key(shipped, site, section.disabled, parameters, code_fingerprint())
        cached = load_cached(cache_dir, key)
        if cached is not None:
            return cached, []
    from agent.policy.build import load_policy  # the packs' parser: only on a cache miss

    policy, issues = load_policy(shipped, site, section.disabled, parameters)
    if policy is not None and key is not None and cache_dir is not None:
        store_cached(cache_dir, key, policy)
    return policy, issues
