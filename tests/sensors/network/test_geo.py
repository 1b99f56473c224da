"""Country sources: the built-in table, `.mmdb` files written here with mmdb-writer, CSV."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from prometheus_client import REGISTRY

from agent.sensors.network import geo
from agent.sensors.network.destinations import CountryTable, CountryTableError, Destinations

ip = ipaddress.ip_address


def write_mmdb(
    path: Path, database_type: str, networks: dict[str, dict[str, Any]], ip_version: int = 6
) -> Path:
    w = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description={"en": f"{database_type} written by the test"},
    )
    for cidr, record in networks.items():
        w.insert_network(IPSet([cidr]), record)
    w.to_db_file(str(path))
    return path


def geolite2_country(tmp_path: Path) -> Path:
    """The GeoLite2-Country record layout: country and registered_country with iso_code."""
    return write_mmdb(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        {
            "81.2.69.0/24": {
                "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
                "registered_country": {"iso_code": "GB"},
            },
            "110.242.0.0/16": {
                "country": {"iso_code": "CN", "names": {"en": "China"}},
                "registered_country": {"iso_code": "CN"},
            },
            # an anycast block: no country, only the registry's
            "1.1.1.0/24": {"registered_country": {"iso_code": "AU"}},
            "2a02:ff0::/32": {"country": {"iso_code": "DE"}},
        },
    )


def test_builtin_table_needs_no_setup() -> None:
    src = geo.open_countries(None)
    assert src.info.source == "builtin" and src.info.description.startswith("iptocc ")
    assert src.lookup(ip("140.82.112.3")) == "US"
    assert src.lookup(ip("110.242.68.66")) == "CN"
    assert src.lookup(ip("2a00:1450:4001:82b::200e")) == "IE"
    assert src.lookup(ip("192.168.1.1")) is None
    # the wheel's SBOM dates the data: a build of this decade, not in the future
    assert src.info.built is not None
    assert datetime(2024, 1, 1, tzinfo=UTC) < src.info.built < datetime.now(UTC)


def test_geolite2_country_mmdb_is_read(tmp_path: Path) -> None:
    src = geo.open_countries(geolite2_country(tmp_path))
    assert isinstance(src, geo.MmdbCountries)
    assert (src.info.source, src.info.description) == ("mmdb", "GeoLite2-Country")
    assert src.info.built is not None and abs(src.info.age_days() or 99) < 1
    assert src.lookup(ip("81.2.69.142")) == "GB"
    assert src.lookup(ip("110.242.68.66")) == "CN"
    assert src.lookup(ip("1.1.1.1")) == "AU"  # registered_country when country is absent
    assert src.lookup(ip("2a02:ff0::1")) == "DE"
    assert src.lookup(ip("8.8.8.8")) is None


def test_mmdb_found_by_content_not_name_and_city_and_flat_layouts(tmp_path: Path) -> None:
    city = write_mmdb(
        tmp_path / "cities.dat",
        "GeoLite2-City",
        {"81.2.69.0/24": {"city": {"names": {"en": "London"}}, "country": {"iso_code": "gb"}}},
    )
    assert geo.open_countries(city).lookup(ip("81.2.69.1")) == "GB"
    flat = write_mmdb(
        tmp_path / "dbip.mmdb", "dbip-country-lite", {"5.0.0.0/16": {"country_code": "NL"}}, 4
    )
    src = geo.open_countries(flat)
    assert src.lookup(ip("5.0.1.2")) == "NL"
    assert src.lookup(ip("2001:db8::1")) is None  # an IPv4-only file asked about IPv6


def test_destinations_use_an_mmdb_and_asn_org(tmp_path: Path) -> None:
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "52.216.0.0/15": {
                "autonomous_system_number": 16509,
                "autonomous_system_organization": "AMAZON-02",
            }
        },
    )
    countries = write_mmdb(
        tmp_path / "c.mmdb", "GeoLite2-Country", {"52.216.0.0/15": {"country": {"iso_code": "US"}}}
    )
    d = Destinations(countries=geo.open_countries(countries), asn=geo.open_asn(asn))
    assert d.classify("52.216.8.9") == ("foreign", "US")
    assert d.org("52.216.8.9") == "AMAZON-02"
    assert d.org("81.2.69.1") is None and d.classify("81.2.69.1") == ("unknown", None)
    assert d.org("10.1.2.3") is None


def test_bad_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "broken.mmdb"
    fake.write_bytes(b"\x00" * 64 + b"\xab\xcd\xefMaxMind.com" + b"\x01\x02")
    with pytest.raises(geo.GeoDataError, match=r"broken\.mmdb: not a readable MaxMind DB"):
        geo.open_countries(fake)
    csv = tmp_path / "asn.csv"
    csv.write_text("1.0.0.0/8,AU\n")
    with pytest.raises(geo.GeoDataError, match=r"asn\.csv: network\.asn_db must be"):
        geo.open_asn(csv)
    with pytest.raises(geo.GeoDataError, match=r"missing\.mmdb: cannot read"):
        geo.open_countries(tmp_path / "missing.mmdb")
    bad_csv = tmp_path / "c.csv"
    bad_csv.write_text("1.2.3.0/24,US\n1.2.4.0/24,XYZ\n")
    with pytest.raises(CountryTableError, match=r"c\.csv:2: country 'XYZ'"):
        geo.open_countries(bad_csv)
    assert issubclass(CountryTableError, geo.GeoDataError)


def test_csv_is_dated_by_its_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("1.2.3.0/24,US\n")
    src = geo.open_countries(path)
    assert isinstance(src, CountryTable)
    assert src.info.source == "csv" and src.info.description == "c.csv"
    assert src.lookup(ip("1.2.3.4")) == "US"


def test_staleness_warning_and_metric() -> None:
    built = datetime(2026, 1, 1, tzinfo=UTC)
    info = geo.GeoDataInfo("builtin", "iptocc 9.9.9 (RIR delegation data)", built)
    assert info.stale(180, now=built + timedelta(days=100)) is None
    warning = info.stale(180, now=built + timedelta(days=200))
    assert warning is not None and "200 days old" in warning and "pip install -U iptocc" in warning
    assert geo.GeoDataInfo("csv", "c.csv", None).stale(1) is None  # unknown age: no claim
    assert geo.report(info, 10_000) is None
    value = REGISTRY.get_sample_value(
        "egress_agent_country_data_timestamp_seconds", {"source": "builtin"}
    )
    assert value == built.timestamp()
    assert geo.report(info, 1) is not None
    doc = info.as_dict(1)
    assert doc["built"] == "2026-01-01T00:00:00+00:00" and doc["stale"]
