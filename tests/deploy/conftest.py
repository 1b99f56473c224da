"""Fixtures for the deploy tests: a self-signed TLS certificate made by `openssl req`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import have


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
