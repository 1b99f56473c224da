"""Secrets in text: private keys, cloud credentials, tokens — the type only, never the value.

Run over the (bounded) text of text-like files and extracted document text. A match
yields one `secret` tag per type with the count; the matched value is never kept.
"""

from __future__ import annotations

import re

from agent.events import Tag

_PATTERNS: list[tuple[str, str, re.Pattern[str]]] = [
    (
        "private_key",
        "PEM private key",
        re.compile(
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY( BLOCK)?-----"
        ),
    ),
    ("aws_access_key", "AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (
        "aws_secret_key",
        "AWS secret access key",
        re.compile(r"(?i:aws_secret_access_key)\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}\b"),
    ),
    (
        "github_token",
        "GitHub token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{50,})"),
    ),
    ("gitlab_token", "GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20}\b")),
    ("slack_token", "Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("google_api_key", "Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    (
        "gcp_service_account",
        "GCP service-account key",
        re.compile(r'"type"\s*:\s*"service_account"[\s\S]{0,2000}"private_key"'),
    ),
    ("openai_key", "OpenAI API key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}")),
    (
        "aliyun_access_key",
        "Alibaba Cloud AccessKey id",
        re.compile(r"\bLTAI[0-9A-Za-z]{12,20}\b"),
    ),
    (
        "jwt",
        "JSON Web Token",
        # starts only where a run of token characters starts: after \b alone, "-eyJ"
        # repeated was a start every 4 characters, each scanning to the end (quadratic)
        re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[\w-]{10,}"),
    ),
]


# a literal each match must contain: `in` is far cheaper than a regex scan of clean text
_NEEDLES: dict[str, tuple[str, ...]] = {
    "private_key": ("PRIVATE KEY",),
    "aws_access_key": ("AKIA", "ASIA"),
    "aws_secret_key": ("ws_secret_access_key", "WS_SECRET_ACCESS_KEY"),
    "github_token": ("gh", "github_pat_"),
    "gitlab_token": ("glpat-",),
    "slack_token": ("xox",),
    "google_api_key": ("AIza",),
    "gcp_service_account": ("service_account",),
    "openai_key": ("sk-",),
    "aliyun_access_key": ("LTAI",),
    "jwt": ("eyJ",),
}


def secret_tags(text: str) -> list[Tag]:
    """One tag per secret type found, with its count (never the value)."""
    tags = []
    for kind, what, pattern in _PATTERNS:
        if not any(n in text for n in _NEEDLES[kind]):
            continue
        n = sum(1 for _ in pattern.finditer(text))
        if n:
            tags.append(Tag("secret", f"{what} ({n}×)", {"type": kind, "count": n}))
    return tags
