"""Fixtures for the deploy tests: a self-signed TLS certificate made by `openssl req`, and
real Prometheus servers stopped at the end of each test."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import have
from tests.deploy.promserver import RULES, Prometheus


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not have("openssl"):
        pytest.skip("openssl is not installed (scripts/system-deps.sh installs it)")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "metrics.crt", d / "metrics.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str, rules: Path = RULES, netns: Any = None, **job_extra: Any) -> Prometheus:
        d = tmp_path / f"prom{len(started)}"
        d.mkdir()
        p = Prometheus(d, target, rules, job_extra, netns)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
