"""Known services by category: the shipped list, site files over it, bad files, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.sensors.network import services
from agent.sensors.network.services import CATEGORIES, Service, ServiceIndex, ServicesError

SHIPPED = services.build()


@pytest.mark.parametrize(
    ("name", "service", "category"),
    [
        ("drive.google.com", "Google Drive", "cloud_storage"),
        ("github.com", "GitHub", "code_hosting"),
        ("api.openai.com", "OpenAI API", "ai_assistant"),
        ("pan.baidu.com", "Baidu Netdisk", "cloud_storage"),
        ("chatgpt.com", "ChatGPT", "ai_assistant"),
        ("claude.ai", "Claude", "ai_assistant"),
        ("api.anthropic.com", "Anthropic API", "ai_assistant"),
        ("gemini.google.com", "Gemini", "ai_assistant"),
        ("chat.deepseek.com", "DeepSeek", "ai_assistant"),
        ("kimi.moonshot.cn", "Kimi", "ai_assistant"),
        ("www.doubao.com", "Doubao", "ai_assistant"),
        ("tongyi.aliyun.com", "Tongyi Qianwen", "ai_assistant"),
        ("huggingface.co", "Hugging Face", "code_hosting"),
        ("cdn-lfs.huggingface.co", "Hugging Face", "code_hosting"),
        ("gitee.com", "Gitee", "code_hosting"),
        ("gitlab.com", "GitLab", "code_hosting"),
        ("bitbucket.org", "Bitbucket", "code_hosting"),
        ("www.jianguoyun.com", "Nutstore", "cloud_storage"),
        ("www.aliyundrive.com", "Aliyun Drive", "cloud_storage"),
        ("content.dropboxapi.com", "Dropbox", "cloud_storage"),
        ("onedrive.live.com", "OneDrive", "cloud_storage"),
        ("contoso-my.sharepoint.com", "OneDrive", "cloud_storage"),
        ("p52-content.icloud.com", "iCloud Drive", "cloud_storage"),
        ("wetransfer.com", "WeTransfer", "file_transfer"),
        ("mail.google.com", "Gmail", "webmail"),
        ("mail.qq.com", "QQ Mail", "webmail"),
        ("web.telegram.org", "Telegram", "messaging"),
        # object storage endpoints, with "*" labels and glob labels
        ("s3.amazonaws.com", "Amazon S3", "cloud_storage"),
        ("my-bucket.s3.eu-west-1.amazonaws.com", "Amazon S3", "cloud_storage"),
        ("b.s3-ap-southeast-1.amazonaws.com", "Amazon S3", "cloud_storage"),
        ("bucket.oss-cn-hangzhou.aliyuncs.com", "Alibaba Cloud OSS", "cloud_storage"),
        ("b-1250000000.cos.ap-guangzhou.myqcloud.com", "Tencent Cloud COS", "cloud_storage"),
        # a more specific entry under another service's domain wins
        ("dashscope.aliyuncs.com", "Tongyi Qianwen", "ai_assistant"),
        ("copilot-proxy.githubusercontent.com", "GitHub Copilot", "ai_assistant"),
        # case and a trailing root dot do not matter
        ("DRIVE.Google.COM.", "Google Drive", "cloud_storage"),
    ],
)
def test_shipped_list(name: str, service: str, category: str) -> None:
    assert SHIPPED.lookup(name) == Service(service, category)


@pytest.mark.parametrize(
    "name",
    [
        "google.com",
        "www.google.com",
        "notgithub.com",
        "github.com.evil.example",
        "ec2.amazonaws.com",
        "ecs.cn-hangzhou.aliyuncs.com",
        "com",
        "",
        "a" * 300,
        "..",
        "*",
    ],
)
def test_not_a_known_service(name: str) -> None:
    assert SHIPPED.lookup(name) is None


def test_shipped_file_is_versioned_and_every_category_is_used() -> None:
    assert SHIPPED.revision and SHIPPED.size > 100
    doc = yaml.safe_load(services.SHIPPED.read_text(encoding="utf-8"))
    assert doc["schema"] == services.SCHEMA
    assert {e["category"] for e in doc["services"]} == set(CATEGORIES)


def test_site_file_adds_and_overrides(tmp_path: Path) -> None:
    site = tmp_path / "site-services.yaml"
    site.write_text(
        "services:\n"
        "  - service: Partner SFTP\n"
        "    category: file_transfer\n"
        "    domains: [sftp.partner.example]\n"
        "  - service: Corporate GitHub\n"
        "    category: code_hosting\n"
        "    domains: [github.com]\n"
    )
    index = services.build(site)
    assert index.lookup("sftp.partner.example") == Service("Partner SFTP", "file_transfer")
    assert index.lookup("github.com") == Service("Corporate GitHub", "code_hosting")
    assert index.lookup("drive.google.com") == Service("Google Drive", "cloud_storage")
    assert index.revision == SHIPPED.revision and str(site) in index.sources


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "services:\n  - service: X\n    category: backup\n    domains: [x.example]\n",
            3,
            "category 'backup' is not one of",
        ),
        (
            "services:\n  - service: X\n    category: webmail\n    domains:\n      - ok.example\n"
            "      - https://x.example/path\n",
            6,
            "no scheme, path or port",
        ),
        (
            "services:\n  - service: X\n    category: webmail\n    domain: [x.example]\n",
            4,
            "unknown key 'domain'",
        ),
        (
            "services:\n  - service: X\n    category: webmail\n    domains: []\n",
            4,
            "'domains' must be a non-empty list",
        ),
        (
            "services:\n  - service: X\n    category: webmail\n    domains: ['*.*']\n",
            4,
            "matches everything",
        ),
        ("services:\n  - just a string\n", 2, "each service must be a mapping"),
        ("services: {a: 1}\n", 1, "'services' must be a list"),
        ("schema: 2\nservices: []\n", 1, "schema must be 1"),
        ("services:\n  - service: X\n    category: [unclosed\n", 4, "YAML syntax error"),
        ("services:\n  - service: X\n    service: Y\n", 3, "duplicate key 'service'"),
    ],
)
def test_bad_file_is_one_line_naming_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ServicesError) as err:
        services.build(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_site_file(tmp_path: Path) -> None:
    with pytest.raises(ServicesError, match=r"missing\.yaml: cannot read services file"):
        services.build(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ServicesError, match=r"bin\.yaml:1: not UTF-8"):
        services.build(binary)


def test_lookup_is_bounded_on_hostile_names() -> None:
    index = ServiceIndex()
    # many glob patterns at many depths: the walk meets each trie node at one depth only
    for i in range(200):
        index.add("*." * (i % 20) + f"x{i}*.example", Service(f"s{i}", "webmail"))
    name = ".".join(["x1a"] * 61) + ".example"  # 251 characters: within a DNS name
    # only "*.x1*.example" matches; a backtracking matcher would not return before the
    # test's timeout, this walk visits at most the trie's nodes
    assert index.lookup(name) == Service("s1", "webmail")
    assert index.lookup("x1a." * 70 + "example") is None  # longer than any DNS name


@given(st.text(max_size=300))
def test_lookup_never_raises(name: str) -> None:
    result = SHIPPED.lookup(name)
    assert result is None or result.category in CATEGORIES
