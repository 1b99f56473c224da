"""Rules on the destination's known service (issue 16): a site pack that uses `service`,
`service_category` and `dest_org` loads, its own rule tests pass, and it decides on a flow
replayed from a scapy capture with the built-in country table and services list."""

from __future__ import annotations

from pathlib import Path

from agent.config import NetworkSection
from agent.policy.build import load_policy
from agent.sensors.network.replay import replay_pcap
from tests.conftest import cli
from tests.sensors.network.pcaps import Clock, tcp_session, write
from tests.sensors.network.tls import client_hello

PACK = """\
pack:
  id: site-services
  name: Uploads to known services
  regime: SITE
  version: "1"
  required_engine_version: "1.0"
  sources:
    - title: Site procedure on AI assistants and public hosts (test)
      ref: section 1
rules:
  - id: site-ai-assistant-upload
    description: A sizeable upload to an AI assistant, in any country
    condition:
      all:
        - {field: event, eq: flow}
        - {field: service_category, eq: ai_assistant}
        - {field: bytes_out, ge: 10000}
    severity: medium
    effective_from: 2020-01-01
    action: alert
    tests:
      - name: 50 kB to the OpenAI API
        facts: {event: flow, service: OpenAI API, service_category: ai_assistant, bytes_out: 50000}
        expect: decision
      - name: 50 kB to GitHub
        facts: {event: flow, service: GitHub, service_category: code_hosting, bytes_out: 50000}
        expect: none
  - id: site-weights-to-hugging-face
    description: Model weights pushed to Hugging Face
    condition:
      all:
        - {field: kinds, contains: model_weights}
        - {field: service, eq: Hugging Face}
    severity: high
    effective_from: 2020-01-01
    action: alert
    tests:
      - name: a safetensors file to huggingface.co
        facts: {event: transfer, kinds: [model_weights], service: Hugging Face, dest_org: AMAZON-02}
        expect: decision
"""


def test_pack_on_service_facts_checks_and_decides_on_a_replayed_flow(tmp_path: Path) -> None:
    pack = tmp_path / "site-services.yaml"
    pack.write_text(PACK)
    res = cli("policy", "check", str(pack))
    assert res.stdout.startswith("ok:"), res.stdout + res.stderr
    policy, issues = load_policy([], [pack])
    assert policy is not None, issues
    clock = Clock()
    pkts = tcp_session(
        clock,
        "10.0.0.5",
        "162.159.140.245",
        41000,
        443,
        [client_hello("api.openai.com"), b"\x17" * 30_000],
    )
    pkts += tcp_session(
        clock,
        "10.0.0.5",
        "140.82.112.3",
        41001,
        443,
        [client_hello("github.com"), b"\x17" * 30_000],
    )
    flows = {
        f.sni: f for f in replay_pcap(write(tmp_path / "p.pcap", pkts), NetworkSection()).flows
    }
    (d,) = policy.decide_flow(flows["api.openai.com"])
    assert d.rule_id == "site-ai-assistant-upload"
    assert policy.decide_flow(flows["github.com"]) == []
