"""Destination class and country: config CIDRs, approved names, the CSV country table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sensors.network.destinations import CountryTable, CountryTableError, Destinations

SAMPLE = Path(__file__).parent / "data" / "country.csv"


def test_country_table_from_sample_csv() -> None:
    t = CountryTable.from_csv(SAMPLE)
    assert len(t) == 5
    assert t.lookup(ipaddress.ip_address("203.0.113.9")) == "US"
    assert t.lookup(ipaddress.ip_address("198.51.100.127")) == "DE"
    assert t.lookup(ipaddress.ip_address("198.51.100.128")) == "CN"
    assert t.lookup(ipaddress.ip_address("2001:db8:1::5")) == "JP"
    assert t.lookup(ipaddress.ip_address("192.0.2.1")) is None
    assert t.lookup(ipaddress.ip_address("2001:db8:2::1")) is None


def test_classes_in_order() -> None:
    d = Destinations(
        internal=["10.0.0.0/8", "fc00::/7"],
        approved=["203.0.113.64/26", "github.com", "*.corp.example"],
        foreign=["192.0.2.0/24"],
        domestic_country="CN",
        countries=CountryTable.from_csv(SAMPLE),
    )
    assert d.classify("127.0.0.1") == ("loopback", None)
    assert d.classify("::1") == ("loopback", None)
    assert d.classify("10.200.1.1") == ("internal", None)
    assert d.classify("fd00::1") == ("internal", None)
    assert d.classify("203.0.113.70") == ("approved", "US")
    assert d.classify("203.0.113.1", "api.github.com") == ("approved", "US")
    assert d.classify("203.0.113.1", "x.corp.example") == ("approved", "US")
    assert d.classify("203.0.113.1", "notgithub.com") == ("foreign", "US")
    assert d.classify("192.0.2.7") == ("foreign", None)
    assert d.classify("198.51.100.200") == ("domestic", "CN")
    assert d.classify("198.51.100.1") == ("foreign", "DE")
    assert d.classify("::ffff:198.51.100.200") == ("domestic", "CN")
    assert d.classify("8.8.8.8") == ("unknown", None)
    assert d.classify("not an address") == ("unknown", None)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.0/8,CHN\n", "two-letter"),
        ("10.0.0.0/33,CN\n", "10.0.0.0/33"),
        ("1.1.1.1,1.1.1.0,CN\n", "ends before"),
        ("x\n10.0.0.0/8,CN\nbroken\n", ":3:"),
    ],
)
def test_bad_country_csv_names_file_and_line(tmp_path: Path, text: str, why: str) -> None:
    p = tmp_path / "c.csv"
    p.write_text(text)
    with pytest.raises(CountryTableError, match=why):
        CountryTable.from_csv(p)


def test_missing_country_csv(tmp_path: Path) -> None:
    with pytest.raises(CountryTableError, match="cannot read"):
        CountryTable.from_csv(tmp_path / "absent.csv")


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**16)), max_size=50))
def test_lookup_matches_a_linear_scan(ranges: list[tuple[int, int]]) -> None:
    # non-overlapping intervals built from sorted starts
    rows = []
    last_end = -1
    for start, span in sorted(ranges):
        if start <= last_end:
            continue
        end = min(start + span, 2**32 - 1)
        rows.append((4, start, end, "AA" if start % 2 else "BB"))
        last_end = end
    t = CountryTable(rows)
    for probe in [r[1] for r in rows] + [r[2] for r in rows] + [r[2] + 1 for r in rows] + [0]:
        probe = min(probe, 2**32 - 1)
        want = next((c for _v, a, b, c in rows if a <= probe <= b), None)
        assert t.lookup(ipaddress.IPv4Address(probe)) == want


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_hostile_country_files_give_a_clear_error_or_a_table(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "h.csv"
    p.write_bytes(data)
    try:
        t = CountryTable.from_csv(p)
    except CountryTableError as e:
        assert str(p) in str(e)
    else:
        assert len(t) >= 0


def test_cached_answers_equal_fresh_ones() -> None:
    """The per-address cache keeps only what the address decides: the name still counts."""

    def fresh() -> Destinations:
        return Destinations(
            internal=["10.0.0.0/8"],
            approved=["203.0.113.64/26", "github.com"],
            foreign=["192.0.2.0/24"],
            countries=CountryTable.from_csv(SAMPLE),
        )

    shared = fresh()
    addresses = ["10.1.1.1", "203.0.113.70", "203.0.113.1", "192.0.2.7", "198.51.100.200", "bad"]
    names = [None, "api.github.com", "example.org"]
    for _ in range(2):  # the second round answers from the cache
        for address in addresses:
            for name in names:
                assert shared.classify(address, name) == fresh().classify(address, name)
