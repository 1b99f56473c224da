"""Issue 16's "done when": on a fresh config, replayed captures to public addresses are
`foreign` with their country, known services are named with their category, an .mmdb
built here is read, and every flow carries the reference Community ID.

The captures are written by scapy and only replayed: no packet is sent anywhere.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import communityid
import yaml
from scapy.packet import Packet

from agent.config import NetworkSection
from agent.policy.facts import flow_facts
from agent.sensors.network.destinations import Destinations
from agent.sensors.network.replay import destinations_from, replay_pcap
from tests.conftest import cli
from tests.sensors.network.pcaps import Clock, tcp_session, write
from tests.sensors.network.test_geo import write_mmdb
from tests.sensors.network.tls import client_hello

CLIENT = "10.0.0.5"
# public addresses, in a capture file only (what these names resolved to at some point)
SITES = {
    "drive.google.com": ("142.250.72.14", "US", "Google Drive", "cloud_storage", "foreign"),
    "github.com": ("140.82.112.3", "US", "GitHub", "code_hosting", "foreign"),
    "api.openai.com": ("162.159.140.245", "US", "OpenAI API", "ai_assistant", "foreign"),
    "pan.baidu.com": ("110.242.68.66", "CN", "Baidu Netdisk", "cloud_storage", "domestic"),
}


def packets(upload: int = 200_000) -> list[Packet]:
    clock = Clock()
    pkts = []
    for i, (sni, (addr, *_)) in enumerate(SITES.items()):
        body = [client_hello(sni)] + [b"\x17" * 1400] * (upload // 1400)
        pkts += tcp_session(clock, CLIENT, addr, 41000 + i, 443, body)
    # an upload to a public address with no name at all
    pkts += tcp_session(clock, CLIENT, "1.0.16.1", 41100, 8443, [b"z" * 5000])
    return pkts


def capture(tmp_path: Path) -> Path:
    return write(tmp_path / "sites.pcap", packets())


def reference_id(f: object) -> str:
    tpl = communityid.FlowTuple.make_tcp(f.src_ip, f.dst_ip, f.src_port, f.dst_port)  # type: ignore[attr-defined]
    return str(communityid.CommunityID().calc(tpl))


def test_fresh_config_knows_country_service_and_community_id(tmp_path: Path) -> None:
    flows = {f.dst_ip: f for f in replay_pcap(capture(tmp_path), NetworkSection()).flows}
    assert len(flows) == 5
    for sni, (addr, country, service, category, dest_class) in SITES.items():
        f = flows[addr]
        assert (f.sni, f.dest_class, f.country) == (sni, dest_class, country)
        assert (f.service, f.service_category) == (service, category)
        assert f.community_id == reference_id(f)
    bare = flows["1.0.16.1"]
    assert (bare.dest_class, bare.country, bare.service, bare.service_category) == (
        "foreign",
        "JP",
        None,
        None,
    )
    assert bare.community_id == reference_id(bare)


def test_policy_facts_see_service_and_category(tmp_path: Path) -> None:
    flows = replay_pcap(capture(tmp_path), NetworkSection()).flows
    by_name = {f.sni: flow_facts(f) for f in flows if f.sni}
    assert by_name["api.openai.com"]["service_category"] == "ai_assistant"
    assert by_name["api.openai.com"]["service"] == "OpenAI API"
    assert by_name["github.com"]["country"] == "US"
    assert "service" not in flow_facts(next(f for f in flows if not f.sni))


def test_mmdb_country_db_and_asn_db_from_config(tmp_path: Path) -> None:
    countries = write_mmdb(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        {"140.82.112.0/20": {"country": {"iso_code": "DE"}}},  # moved, for the test
    )
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {"140.82.112.0/20": {"autonomous_system_organization": "GITHUB"}},
    )
    cfg = NetworkSection(country_db=countries, asn_db=asn)  # type: ignore[arg-type]
    flows = {f.dst_ip: f for f in replay_pcap(capture(tmp_path), cfg).flows}
    gh = flows["140.82.112.3"]
    assert (gh.dest_class, gh.country, gh.dest_org, gh.service) == (
        "foreign",
        "DE",
        "GITHUB",
        "GitHub",
    )
    # the site's file replaces the built-in table: what it does not list is unknown
    assert (flows["142.250.72.14"].dest_class, flows["142.250.72.14"].country) == ("unknown", None)


def test_cli_replay_on_a_fresh_install_and_a_site_services_file(tmp_path: Path) -> None:
    site = tmp_path / "services.yaml"
    site.write_text(
        "services:\n  - service: Lab Share\n    category: file_transfer\n"
        "    domains: [github.com]\n"
    )
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "agent": {"state_dir": str(tmp_path / "state")},
                "network": {"services_file": str(site)},
            }
        )
    )
    res = cli("replay", str(capture(tmp_path)), "--json", config=cfg)
    docs = {d["dst_ip"]: d for d in map(json.loads, res.stdout.splitlines())}
    gh = docs["140.82.112.3"]
    assert (gh["country"], gh["dest_class"]) == ("US", "foreign")
    assert (gh["service"], gh["service_category"]) == ("Lab Share", "file_transfer")
    assert docs["142.250.72.14"]["service"] == "Google Drive"
    assert gh["community_id"].startswith("1:")
    table = cli("replay", str(tmp_path / "sites.pcap"), config=cfg).stdout
    assert "drive.google.com (sni) [Google Drive, cloud_storage]" in table
    stored = cli("replay", str(tmp_path / "sites.pcap"), "--store", config=cfg)
    assert "stored 5 flows" in stored.stderr
    listed = cli("events", "list", "--kind", "flow", "--json", config=cfg).stdout.splitlines()
    rows = {d["dst_ip"]: d for d in map(json.loads, listed)}
    assert rows["140.82.112.3"]["community_id"] == gh["community_id"]
    assert rows["162.159.140.245"]["service_category"] == "ai_assistant"
    assert rows["110.242.68.66"]["service"] == "Baidu Netdisk"
    listing = cli("events", "list", "--kind", "flow", config=cfg).stdout
    assert "-> pan.baidu.com:443 (CN) [Baidu Netdisk, cloud_storage]" in listing
    site.write_text("services:\n  - service: X\n    category: nope\n    domains: [x.example]\n")
    bad = cli("replay", str(tmp_path / "sites.pcap"), config=cfg, check=False)
    assert bad.returncode == 2 and f"{site}:3: category 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_destinations_default_constructor_has_no_country_source() -> None:
    # FlowTable's fallback stays table-free: the configured path is destinations_from
    assert Destinations().classify("140.82.112.3") == ("unknown", None)


def test_status_shows_country_data_date_and_services(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"agent": {"state_dir": str(tmp_path / "state")}}))
    doc = json.loads(cli("status", "--json", config=cfg, check=False).stdout)["destinations"]
    geo = doc["country_data"]
    assert geo["source"] == "builtin" and geo["description"].startswith("iptocc ")
    assert geo["built"] and geo["age_days"] >= 0
    assert doc["services"]["revision"] and doc["services"]["domains"] > 100
    # a site CSV last written 400 days ago is stale under the default 180 days
    table = tmp_path / "countries.csv"
    table.write_text("140.82.112.0/20,US\n")
    old = time.time() - 400 * 86400
    os.utime(table, (old, old))
    cfg.write_text(
        yaml.safe_dump(
            {"agent": {"state_dir": str(tmp_path / "state")}, "network": {"country_db": str(table)}}
        )
    )
    text = cli("status", config=cfg, check=False).stdout
    assert "country:   countries.csv [csv]" in text and "(400 days old)" in text
    assert "STALE: country data countries.csv is 400 days old" in text
    (tmp_path / "broken.mmdb").write_bytes(b"\xab\xcd\xefMaxMind.com")
    cfg.write_text(
        yaml.safe_dump(
            {
                "agent": {"state_dir": str(tmp_path / "state")},
                "network": {"country_db": str(tmp_path / "broken.mmdb")},
            }
        )
    )
    text = cli("status", config=cfg, check=False).stdout
    assert "country:   UNUSABLE: " in text and "broken.mmdb: not a readable MaxMind DB" in text


def test_sensor_status_names_its_country_table() -> None:
    from agent.sensors.network.sensor import NetworkSensor

    cfg = NetworkSection(interfaces=["lo"])
    geo = NetworkSensor(cfg, destinations_from(cfg)).status()["country_data"]
    assert isinstance(geo, dict) and geo["source"] == "builtin" and geo["built"]
    assert NetworkSensor(cfg, Destinations()).status()["country_data"] is None
