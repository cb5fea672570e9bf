"""Which upstream URLs a route may point at: checked when an admin writes a route.

Pure: no DNS. A hostname is judged by its spelling only; a name that resolves to a link-local
or metadata address is refused when the gateway connects, by the upstream client's check of every
resolved address against UPSTREAM_DENY_NETWORKS (`heliox.core.netdeny`). Loopback and private
ranges are allowed by default because the gateway commonly fronts services on the same host or
network (the seeded routes point at 127.0.0.1); link-local and cloud metadata endpoints, the
classic SSRF targets, need the route's explicit opt-in.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from heliox.core.netdeny import embedded_v4

MAX_UPSTREAM_URL_LENGTH = 2000

_LINK_LOCAL_V4 = ipaddress.IPv4Network("169.254.0.0/16")
_LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, Oracle
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# Underscores are not valid in DNS host names but are common in container service names.
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# A label a resolver may read as part of a number: 0x-hex, octal or decimal (inet_aton forms).
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")


class UpstreamUrlError(ValueError):
    """The URL may not be used as an upstream; the message says why."""


def validate_upstream_url(url: str, *, allow_link_local: bool = False) -> str:
    """Return the normalised URL (lower-case scheme and host, no trailing slash) or raise.

    `allow_link_local` admits link-local and cloud metadata addresses.
    """
    if not url:
        raise UpstreamUrlError("is empty")
    if len(url) > MAX_UPSTREAM_URL_LENGTH:
        raise UpstreamUrlError(f"is longer than {MAX_UPSTREAM_URL_LENGTH} characters")
    # urlsplit silently drops tabs and newlines; a URL that needs them is not one we store.
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UpstreamUrlError("contains whitespace or control characters")
    if not url.isascii():
        raise UpstreamUrlError("contains non-ASCII characters (write the host in punycode, xn--)")
    if "\\" in url:
        # Browsers and some clients read a backslash as a slash; parsers disagree on the host.
        raise UpstreamUrlError("must not contain backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a bracketed host that is not an IPv6 address
        raise UpstreamUrlError(f"is not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme!r}" if scheme else "missing"
        raise UpstreamUrlError(f"scheme {shown} is not allowed: use http or https")
    if not parts.netloc:
        raise UpstreamUrlError("has no host")
    if "@" in parts.netloc:
        raise UpstreamUrlError("must not contain credentials (user:password@)")
    if "?" in url:
        raise UpstreamUrlError("must not contain a query string")
    if "#" in url:
        raise UpstreamUrlError("must not contain a fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise UpstreamUrlError("has an invalid port") from exc
    if port == 0:
        raise UpstreamUrlError("has an invalid port")
    host = (parts.hostname or "").lower()
    if not host:
        raise UpstreamUrlError("has no host")
    _check_host(host, bracketed=parts.netloc.startswith("["), allow_link_local=allow_link_local)
    return f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _check_host(host: str, *, bracketed: bool, allow_link_local: bool) -> None:
    if bracketed:
        if "%" in host:
            raise UpstreamUrlError("IPv6 zone identifiers are not allowed")
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UpstreamUrlError(f"host [{host}] is not a valid IPv6 address") from exc
        _check_address(v6, allow_link_local=allow_link_local)
        return
    if "%" in host:
        raise UpstreamUrlError("host must not be percent-encoded")
    name = host.removesuffix(".")
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # WHATWG URL rules (and inet_aton) read a host ending in a number as an IPv4 address, so
        # "2852039166" or "0xA9.0xFE.43518" would reach 169.254.169.254: only dotted-quad passes.
        if not _CANONICAL_V4.match(name):
            raise UpstreamUrlError(f"host {host!r} is not a canonical dotted-quad IPv4 address")
        _check_address(ipaddress.IPv4Address(name), allow_link_local=allow_link_local)
        return
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise UpstreamUrlError(f"host {host!r} is not a valid host name")
    if name in _METADATA_NAMES and not allow_link_local:
        raise UpstreamUrlError(
            f"host {host!r} is a cloud metadata endpoint (set allow_private_upstream to permit it)"
        )


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _check_address(addr: IPAddress, *, allow_link_local: bool) -> None:
    embedded = embedded_v4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
    for candidate in (addr, embedded):
        if candidate is None:
            continue
        if candidate.is_unspecified:
            raise UpstreamUrlError(f"{addr} is the unspecified address, not a destination")
        if candidate.is_multicast or candidate == ipaddress.IPv4Address("255.255.255.255"):
            raise UpstreamUrlError(f"{addr} is a multicast or broadcast address")
        if allow_link_local:
            continue
        if candidate in _METADATA_ADDRESSES:
            raise UpstreamUrlError(
                f"{addr} is a cloud metadata address (set allow_private_upstream to permit it)"
            )
        if _is_link_local(candidate):
            raise UpstreamUrlError(
                f"{addr} is a link-local address (set allow_private_upstream to permit it)"
            )


def _is_link_local(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv4Address):
        return addr in _LINK_LOCAL_V4
    return addr in _LINK_LOCAL_V6
