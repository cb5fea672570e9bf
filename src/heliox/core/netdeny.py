"""Which resolved addresses the gateway refuses to connect to (`UPSTREAM_DENY_NETWORKS`).

Pure: parsing the list and judging one address. The upstream client applies it to every address
it is about to connect to, after DNS, so a host name spelled harmlessly (`metadata.example`,
`169.254.169.254.nip.io`) that resolves into a denied network is refused all the same.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "DEFAULT_DENY_NETWORKS",
    "Network",
    "address_denied",
    "embedded_v4",
    "parse_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local (which holds the metadata services of AWS, GCP, Azure, OpenStack, Oracle,
# DigitalOcean and Tencent, and AWS ECS task credentials at 169.254.170.2), AWS IMDS over IPv6,
# Alibaba Cloud's metadata service and Azure's WireServer. Loopback and private ranges stay
# reachable: a gateway commonly fronts services on its own host or network.
DEFAULT_DENY_NETWORKS = (
    "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,168.63.129.16/32"
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDRs; raises ValueError naming the bad entry."""
    out: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not an IP address or CIDR") from exc
    return tuple(out)


def embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to the same host (mapped, compatible, NAT64)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _NAT64:
        return low32
    if int(addr) >> 32 == 0 and int(addr) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return low32
    return None


def address_denied(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether `address` (as a socket reports it, IPv6 possibly with a %zone) is in `networks`,
    directly or through the IPv4 address an IPv6 form carries. Unparseable input is denied."""
    if not networks:
        return False
    try:
        addr: Address = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return True
    candidates: list[Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        v4 = embedded_v4(addr)
        if v4 is not None:
            candidates.append(v4)
    return any(a in net for a in candidates for net in networks if a.version == net.version)
