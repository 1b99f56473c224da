"""Country and organisation of an address, offline: the built-in table, MMDB or CSV files.

Export control is about technology leaving the country, so a fresh install must know
which addresses are abroad without any setup. `open_countries(None)` gives the table
installed with the package (`iptocc`: the five Regional Internet Registries' delegation
files, rebuilt nightly upstream and embedded in the wheel; chosen in
docs/network-sensor.md, "Country with no setup"). `network.country_db` replaces it with
a site's MaxMind GeoLite2/GeoIP2 or DB-IP `.mmdb` file (read with `maxminddb`) or a CSV
(`destinations.CountryTable`). `network.asn_db` adds the owning organisation from a
GeoLite2-ASN style `.mmdb` ("Amazon.com, Inc." for an S3 endpoint).

Every source says what it is and how old its data is (`GeoDataInfo`), for `status`, the
`egress_agent_country_data_timestamp_seconds` gauge and the start-up staleness warning.
Lookups happen once per address (`Destinations` caches them), never per packet.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from agent.errors import UserFacingError

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MMDB_MARKER = b"\xab\xcd\xefMaxMind.com"
_MMDB_TAIL = 128 * 1024  # the metadata section sits in the last 128 KiB of the file
_MAX_SBOM = 1 << 20


class GeoDataError(UserFacingError, ValueError):
    """A country or ASN database cannot be used: the message names the file."""


@dataclass(frozen=True, slots=True)
class GeoDataInfo:
    """What a country source is, for status and metrics."""

    source: str  # builtin | mmdb | csv: the bounded metric label
    description: str  # e.g. "iptocc 3.3.170 (RIR delegation data)" or "GeoLite2-Country"
    built: datetime | None  # when the data was made, when known

    def age_days(self, now: datetime | None = None) -> float | None:
        if self.built is None:
            return None
        return ((now or datetime.now(UTC)) - self.built).total_seconds() / 86400

    def stale(self, max_age_days: float, now: datetime | None = None) -> str | None:
        """A one-line warning when the data is older than `max_age_days`, else None."""
        age = self.age_days(now)
        if age is None or age <= max_age_days:
            return None
        fix = (
            "upgrade the egress-agent package (pip install -U iptocc)"
            if self.source == "builtin"
            else "replace the file named by network.country_db"
        )
        return (
            f"country data {self.description} is {age:.0f} days old (built "
            f"{self.built:%Y-%m-%d}; network.country_data_max_age_days is {max_age_days:g}): {fix}"
        )

    def as_dict(self, max_age_days: float | None = None) -> dict[str, Any]:
        age = self.age_days()
        return {
            "source": self.source,
            "description": self.description,
            "built": self.built.isoformat() if self.built else None,
            "age_days": round(age, 1) if age is not None else None,
            "stale": self.stale(max_age_days) if max_age_days is not None else None,
        }


def report(info: GeoDataInfo, max_age_days: float) -> str | None:
    """Publish the data date as a metric and warn once when the table is stale."""
    from agent import metrics

    metrics.COUNTRY_DATA_TIME.labels(info.source).set(info.built.timestamp() if info.built else 0)
    warning = info.stale(max_age_days)
    if warning:
        log.warning("%s", warning)
    return warning


class CountrySource(Protocol):
    info: GeoDataInfo

    def lookup(self, address: IPAddress) -> str | None: ...


class BuiltinCountries:
    """The table installed with the package (iptocc), ~0.1 µs a lookup."""

    def __init__(self) -> None:
        import iptocc

        self._lookup = iptocc.country_code
        self.info = builtin_info()

    def lookup(self, address: IPAddress) -> str | None:
        code = self._lookup(str(address))
        return code.upper() if isinstance(code, str) and len(code) == 2 else None


def builtin_info() -> GeoDataInfo:
    """iptocc embeds its data at build time and does not say when; the wheel's CycloneDX
    SBOM carries the build timestamp, which is the data date of a nightly build."""
    try:
        dist = metadata.distribution("iptocc")
    except metadata.PackageNotFoundError:
        return GeoDataInfo("builtin", "iptocc (not installed)", None)
    built = None
    for f in dist.files or ():
        if f.name.endswith(".cyclonedx.json") and "sboms" in f.parts:
            built = _sbom_time(Path(str(dist.locate_file(f))))
            break
    return GeoDataInfo("builtin", f"iptocc {dist.version} (RIR delegation data)", built)


def _sbom_time(path: Path) -> datetime | None:
    try:
        with path.open("rb") as fh:
            doc = json.loads(fh.read(_MAX_SBOM))
        stamp = doc["metadata"]["timestamp"]
        # "2026-10-27T05:11:26.293935850Z": fromisoformat takes microseconds at most
        head = stamp.rstrip("Z").partition(".")[0]
        return datetime.fromisoformat(head).replace(tzinfo=UTC) if head else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_mmdb(path: Path) -> bool:
    """True when the file ends with a MaxMind DB metadata section, whatever its name."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - _MMDB_TAIL))
            return _MMDB_MARKER in fh.read(_MMDB_TAIL)
    except OSError as e:
        raise GeoDataError(f"{path}: cannot read: {e.strerror}") from None


class _Mmdb:
    def __init__(self, path: Path) -> None:
        import maxminddb

        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            raise GeoDataError(f"{path}: not a readable MaxMind DB file: {e}") from None
        meta = self._reader.metadata()
        self.database_type = str(meta.database_type)
        self.ip_version = int(meta.ip_version)
        self.built = datetime.fromtimestamp(int(meta.build_epoch), UTC)

    def record(self, address: IPAddress) -> Any:
        if address.version == 6 and self.ip_version == 4:
            return None
        try:
            return self._reader.get(address)
        except (ValueError, TypeError):  # corrupt data under one node: that address only
            return None


class MmdbCountries(_Mmdb):
    """GeoLite2/GeoIP2 Country or City, DB-IP country, or any mmdb with `country_code`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.info = GeoDataInfo("mmdb", self.database_type, self.built)

    def lookup(self, address: IPAddress) -> str | None:
        rec = self.record(address)
        if not isinstance(rec, dict):
            return None
        code: Any = None
        for key in ("country", "registered_country"):
            part = rec.get(key)
            if isinstance(part, dict) and part.get("iso_code"):
                code = part["iso_code"]
                break
        else:
            code = rec.get("country_code")  # ip-location-db style flat records
        if isinstance(code, str) and len(code) == 2 and code.isalpha():
            return code.upper()
        return None


class AsnTable(_Mmdb):
    """GeoLite2-ASN or DB-IP ASN Lite: address → organisation name (bounded length)."""

    def org(self, address: IPAddress) -> str | None:
        rec = self.record(address)
        if not isinstance(rec, dict):
            return None
        name = rec.get("autonomous_system_organization") or rec.get("as_name")
        if isinstance(name, str) and name.strip():
            return name.strip()[:128]
        return None


def open_countries(path: Path | None) -> CountrySource:
    """The country source for `network.country_db`: built-in when None, else the file by
    its content (a MaxMind DB) or as a CSV."""
    if path is None:
        return BuiltinCountries()
    if is_mmdb(path):
        return MmdbCountries(path)
    from agent.sensors.network.destinations import CountryTable

    return CountryTable.from_csv(path)


def describe(path: Path | None) -> GeoDataInfo:
    """What `open_countries(path)` would use, cheaply (no CSV parse): for `status`."""
    if path is None:
        return builtin_info()
    if is_mmdb(path):
        return MmdbCountries(path).info
    try:
        built = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError as e:
        raise GeoDataError(f"{path}: cannot read: {e.strerror}") from None
    return GeoDataInfo("csv", path.name, built)


def open_asn(path: Path | None) -> AsnTable | None:
    if path is None:
        return None
    if not is_mmdb(path):
        raise GeoDataError(f"{path}: network.asn_db must be a MaxMind DB (.mmdb) file")
    return AsnTable(path)
