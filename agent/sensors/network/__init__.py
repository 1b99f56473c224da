"""The network sensor: outbound flows with exact bytes, names, destination class, process.

Modules, from the wire inwards: `capture` (filtered AF_PACKET sockets), `sockbuf`
(their receive buffers, and the netlink sockets'), `packets` (struct header parsing),
`names` (SNI, HTTP Host, DNS, name cache), `quic` (SNI from QUIC Initials), `seqtrack`
(TCP sequence counting past 4 GiB), `sockdiag` (kernel byte counts and socket owners),
`conntrack` (UDP volume), `netwatch` (netlink notifications that wake the loop),
`procindex` (inode → process), `host` (local addresses and ports), `destinations`
(class and country), `geo` (country and organisation tables), `services` (known
services by category), `communityid` (the flow hash SIEMs join on); the flow logic
shared with replay: `flowstate` (one flow, which count wins), `flowtable` (the state
machine), `reconcile` (the kernel's counts merged in), `flownames` (naming a flow and
its destination), `flowmetrics` (its bytes in Prometheus); `kernelacct` and `sensor`
(the live thread), `pcapfile` and `replay` (offline mode). See docs/network-sensor.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.sensors import SensorUnavailable

if TYPE_CHECKING:
    from agent.runtime import Runtime
    from agent.sensors.network.sensor import NetworkSensor


def create(rt: Runtime) -> NetworkSensor:
    """The registry's factory: a sensor for `network.*` settings (not yet started)."""
    from agent.sensors.network.geo import GeoDataError, report
    from agent.sensors.network.replay import destinations_from
    from agent.sensors.network.sensor import NetworkSensor
    from agent.sensors.network.services import ServicesError

    cfg = rt.settings.network
    if not cfg.interfaces:
        raise SensorUnavailable("no interfaces configured (network.interfaces)")
    try:
        destinations = destinations_from(cfg)
    except GeoDataError as e:
        raise SensorUnavailable(f"network.country_db/asn_db: {e}") from None
    except ServicesError as e:
        raise SensorUnavailable(f"network.services_file: {e}") from None
    if destinations.countries is not None:
        report(destinations.countries.info, cfg.country_data_max_age_days)
    return NetworkSensor(cfg, destinations)
