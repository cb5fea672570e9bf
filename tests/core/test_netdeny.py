"""UPSTREAM_DENY_NETWORKS: parsing, and judging the addresses a socket is about to connect to."""

from __future__ import annotations

import pytest

from heliox.core.netdeny import DEFAULT_DENY_NETWORKS, address_denied, parse_networks

DEFAULT = parse_networks(DEFAULT_DENY_NETWORKS)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.0.23",  # Tencent Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "fe80::1",
        "fe80::1%eth0",  # as a socket reports a scoped link-local address
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
        "not an address",  # whatever cannot be judged is refused
    ],
)
def test_default_list_refuses_metadata_and_link_local(address: str) -> None:
    assert address_denied(address, DEFAULT)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.1", "172.16.0.1", "93.184.216.34"]
)
def test_default_list_allows_loopback_private_and_public(address: str) -> None:
    assert not address_denied(address, DEFAULT)


def test_an_operator_list_replaces_the_default() -> None:
    nets = parse_networks(" 127.0.0.0/8, ::1 ,,10.0.0.0/8")
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
    assert address_denied("127.0.0.2", nets)
    assert address_denied("::ffff:127.0.0.1", nets)
    assert address_denied("::1", nets)
    assert not address_denied("169.254.169.254", nets)


def test_an_empty_list_refuses_nothing() -> None:
    assert parse_networks("") == ()
    assert not address_denied("169.254.169.254", ())


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        parse_networks("169.254.0.0/16,10.0.0.0/33")
    assert str(caught.value) == "'10.0.0.0/33' is not an IP address or CIDR"
