"""Where a flow went: destination class, country, organisation and known service.

`Destinations.classify(address, name)` answers `(dest_class, country)` with dest_class a
`DestClass`: loopback | internal | approved | foreign | domestic | unknown, checked in
that order. Countries come from a `geo.CountrySource`: the table installed with the package when
`network.country_db` is unset, else the site's `.mmdb` file or a CSV loaded here as a
`CountryTable` (`cidr,country` or `first_ip,last_ip,country` rows, as GeoIP/ipinfo/DB-IP
exports give them). `org(address)` names the owner from `network.asn_db`, and
`service(name)` the known service (`services.ServiceIndex`). No download at run time;
every answer is cached per address or name, so a flow costs dict probes, not searches.
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from agent.events import DestClass
from agent.sensors.network.geo import AsnTable, CountrySource, GeoDataError, GeoDataInfo
from agent.sensors.network.services import Service, ServiceIndex

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_SIZE = 65536  # addresses whose classification is kept (cleared when full)
Verdict = tuple[DestClass, str | None]  # (dest_class, country)
# what an address alone decides: a verdict no name changes, or (None, in an approved
# network, the verdict when no name approves it); then the owning organisation
_AddressClass = tuple[Verdict | None, bool, Verdict, str | None]
_UNKNOWN: Verdict = (DestClass.UNKNOWN, None)
_LOOPBACK: Verdict = (DestClass.LOOPBACK, None)
_INTERNAL: Verdict = (DestClass.INTERNAL, None)


class CountryTableError(GeoDataError):
    """The country CSV cannot be used: the message names the file and the line."""


class CountryTable:
    """Sorted, non-overlapping address intervals → ISO country code, per IP version."""

    def __init__(
        self, rows: Iterable[tuple[int, int, int, str]], info: GeoDataInfo | None = None
    ) -> None:
        # rows: (version, first, last, country)
        self.info = info or GeoDataInfo("csv", "country table", None)
        by_version: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for version, first, last, country in rows:
            by_version[version].append((first, last, country))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        self._codes: dict[int, list[str]] = {}
        for version, items in by_version.items():
            items.sort()
            self._starts[version] = [i[0] for i in items]
            self._ends[version] = [i[1] for i in items]
            self._codes[version] = [i[2] for i in items]

    def __len__(self) -> int:
        return sum(len(v) for v in self._starts.values())

    def lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        v = address.version
        value = int(address)
        i = bisect.bisect_right(self._starts[v], value) - 1
        if i >= 0 and value <= self._ends[v][i]:
            return self._codes[v][i]
        return None

    @classmethod
    def from_csv(cls, path: Path) -> CountryTable:
        rows: list[tuple[int, int, int, str]] = []
        try:
            with path.open(newline="", encoding="utf-8") as f:
                first = True
                for lineno, rec in enumerate(csv.reader(f), 1):
                    if not rec or rec[0].startswith("#"):
                        continue
                    header, first = first and not any(ch in rec[0] for ch in ".:"), False
                    if header:
                        continue  # a header line such as "network,country"
                    try:
                        rows.append(_parse_row(rec))
                    except ValueError as e:
                        raise CountryTableError(f"{path}:{lineno}: {e}") from None
        except OSError as e:
            raise CountryTableError(f"{path}: cannot read country table: {e.strerror}") from None
        except (UnicodeDecodeError, csv.Error) as e:
            raise CountryTableError(f"{path}: not a CSV text file: {e}") from None
        # a CSV says nothing of its date: its modification time is the best we have
        built = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return cls(rows, GeoDataInfo("csv", path.name, built))


def _parse_row(rec: list[str]) -> tuple[int, int, int, str]:
    if len(rec) == 2:
        net = ipaddress.ip_network(rec[0].strip(), strict=False)
        first, last, version = int(net.network_address), int(net.broadcast_address), net.version
        code = rec[1]
    elif len(rec) >= 3:
        a = ipaddress.ip_address(rec[0].strip())
        b = ipaddress.ip_address(rec[1].strip())
        if a.version != b.version or int(b) < int(a):
            raise ValueError("range ends before it starts or mixes IPv4 and IPv6")
        first, last, version = int(a), int(b), a.version
        code = rec[2]
    else:
        raise ValueError("expected cidr,country or first,last,country")
    code = code.strip().upper()
    if len(code) != 2 or not code.isalpha():
        raise ValueError(f"country {code!r} is not a two-letter ISO code")
    return version, first, last, code


def _networks(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(i, strict=False) for i in items]


def _is_network(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


class Destinations:
    """The destination classifier built from the `network` config section."""

    def __init__(
        self,
        internal: Iterable[str] = (),
        approved: Iterable[str] = (),
        foreign: Iterable[str] = (),
        domestic_country: str = "CN",
        countries: CountrySource | None = None,
        asn: AsnTable | None = None,
        services: ServiceIndex | None = None,
    ) -> None:
        approved = list(approved)
        self.internal = _networks(internal)
        self.approved_nets = _networks(a for a in approved if _is_network(a))
        self.approved_names = tuple(
            a.lower().lstrip("*").lstrip(".") for a in approved if not _is_network(a)
        )
        self.foreign = _networks(foreign)
        self.domestic = domestic_country.upper()
        self.countries = countries
        self.asn = asn
        self.services = services
        self._cache: dict[str, _AddressClass] = {}

    def _name_approved(self, name: str | None) -> bool:
        if not name:
            return False
        name = name.lower()
        return any(name == a or name.endswith("." + a) for a in self.approved_names)

    def classify(self, address: str, name: str | None = None) -> Verdict:
        fixed, approved_net, otherwise, _ = self._address_class(address)
        if fixed is not None:
            return fixed
        country = otherwise[1]
        if approved_net or self._name_approved(name):
            return DestClass.APPROVED, country
        return otherwise

    def org(self, address: str) -> str | None:
        """The organisation owning the address (network.asn_db), None without one."""
        return self._address_class(address)[3]

    def service(self, name: str | None) -> Service | None:
        """The known service a destination name belongs to (cached per name)."""
        return self.services.lookup(name) if self.services is not None else None

    def _address_class(self, address: str) -> _AddressClass:
        """What the address alone decides, cached: one parse and one country search per
        address instead of two per flow (the config does not change under a running table)."""
        hit = self._cache.get(address)
        if hit is None:
            hit = self._classify_address(address)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def _classify_address(self, address: str) -> _AddressClass:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return _UNKNOWN, False, _UNKNOWN, None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return _LOOPBACK, False, _LOOPBACK, None
        if any(ip in n for n in self.internal):
            return _INTERNAL, False, _INTERNAL, None
        country = self.countries.lookup(ip) if self.countries is not None else None
        org = self.asn.org(ip) if self.asn is not None else None
        approved_net = any(ip in n for n in self.approved_nets)
        if any(ip in n for n in self.foreign):
            return None, approved_net, (DestClass.FOREIGN, country), org
        if country is None:
            return None, approved_net, _UNKNOWN, org
        where = DestClass.DOMESTIC if country == self.domestic else DestClass.FOREIGN
        return None, approved_net, (where, country), org
