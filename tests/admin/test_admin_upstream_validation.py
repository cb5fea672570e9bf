"""Which upstream URLs a route may use (pure; no DNS)."""

from __future__ import annotations

import pytest

from heliox.admin.upstream_validation import UpstreamUrlError, validate_upstream_url

ALLOWED = [
    ("http://127.0.0.1:8001", "http://127.0.0.1:8001"),
    ("http://localhost:8001/", "http://localhost:8001"),
    ("HTTPS://API.Example.COM/v1/", "https://api.example.com/v1"),
    ("http://10.0.0.5/base/path", "http://10.0.0.5/base/path"),
    ("http://192.168.1.10:9000", "http://192.168.1.10:9000"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
    ("http://[2001:db8::1]/", "http://[2001:db8::1]"),
    ("http://gateway_api:8000", "http://gateway_api:8000"),  # compose service names
    ("http://169.255.0.1/", "http://169.255.0.1"),  # just outside link-local
    ("http://100.64.0.1/", "http://100.64.0.1"),  # shared address space is not metadata
    ("http://example.com./x", "http://example.com./x"),
]

REFUSED = [
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("ftp://example.com/", "scheme 'ftp'"),
    ("example.com", "scheme missing"),
    ("//example.com/", "scheme missing"),
    ("http://", "has no host"),
    ("http:///path", "has no host"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://example.com@169.254.169.254/", "credentials"),
    ("http://example.com/?a=1", "query string"),
    ("http://example.com/?", "query string"),
    ("http://example.com/#frag", "fragment"),
    ("http://example.com:0/", "invalid port"),
    ("http://example.com:70000/", "invalid port"),
    ("http://example.com:http/", "invalid port"),
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com/\n", "whitespace"),
    ("http://ex\tample.com/", "whitespace"),
    ("http://exämple.com/", "non-ASCII"),
    ("http://example.com\\@evil/", "backslash"),
    ("http://169.254.169.254/latest/meta-data", "metadata"),
    ("http://169.254.170.2/v2/credentials", "metadata"),
    ("http://100.100.100.200/latest/meta-data", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://METADATA.GOOGLE.INTERNAL./", "metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ("http://[::169.254.1.1]/", "link-local"),
    # Numeric spellings a resolver turns into 169.254.169.254.
    ("http://2852039166/", "canonical"),
    ("http://0xa9fea9fe/", "canonical"),
    ("http://0251.0376.0251.0376/", "canonical"),
    ("http://169.254.43518/", "canonical"),
    ("http://0xA9.0xFE.0xA9.0xFE/", "canonical"),
    ("http://1.2.3/", "canonical"),
    ("http://01.2.3.4/", "canonical"),
    ("http://%31%36%39.254.169.254/", "percent"),
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://[not-an-ip]/", "not a valid URL"),
    ("http://-bad-.example.com/", "host name"),
    ("http://" + "a" * 64 + ".com/", "host name"),
    ("http://example.com/" + "a" * 2000, "longer than"),
    ("", "empty"),
]


@pytest.mark.parametrize(("url", "normalised"), ALLOWED)
def test_allowed_upstreams_are_normalised(url: str, normalised: str) -> None:
    assert validate_upstream_url(url) == normalised


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_upstreams_say_why(url: str, reason: str) -> None:
    with pytest.raises(UpstreamUrlError) as info:
        validate_upstream_url(url)
    assert reason.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/",
        "http://100.100.100.200/",
        "http://169.254.1.1:8080/",
        "http://[fe80::1]/",
    ],
)
def test_link_local_and_metadata_need_the_opt_in(url: str) -> None:
    with pytest.raises(UpstreamUrlError, match="allow_private_upstream"):
        validate_upstream_url(url)
    assert validate_upstream_url(url, allow_link_local=True).startswith("http://")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://user@169.254.169.254/",
        "http://2852039166/",
        "http://0.0.0.0/",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_the_opt_in_never_admits_malformed_urls(url: str) -> None:
    with pytest.raises(UpstreamUrlError):
        validate_upstream_url(url, allow_link_local=True)


def test_normalised_urls_are_accepted_again_unchanged() -> None:
    for url, normalised in ALLOWED:
        assert validate_upstream_url(normalised) == normalised, url
