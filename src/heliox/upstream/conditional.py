"""Conditional GET evaluation (RFC 9110 §13) for the example upstream's validators."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

# An entity-tag, or (leniently) any other comma-free token a client put in the list.
_TAG = re.compile(r'(?:W/)?"[^"]*"|[^,\s]+')


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match list matches `etag`."""
    if if_none_match.strip() == "*":
        return True
    # §13.1.2: If-None-Match uses the weak comparison, so W/ prefixes are ignored.
    target = _opaque(etag)
    return any(_opaque(tag) == target for tag in _TAG.findall(if_none_match))


def unmodified_since(if_modified_since: str, last_modified: str) -> bool:
    """Whether `last_modified` is no later than `if_modified_since` (False if either is bad)."""
    try:
        since = parsedate_to_datetime(if_modified_since)
        modified = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None or modified.tzinfo is None:
        return False
    return modified <= since


def is_not_modified(
    method: str,
    if_none_match: str | None,
    if_modified_since: str | None,
    etag: str | None,
    last_modified: str | None,
) -> bool:
    """Whether a request for a 2xx representation should be answered with 304."""
    if method not in ("GET", "HEAD"):
        return False
    # §13.2.2: If-None-Match takes precedence; If-Modified-Since is ignored when it is present.
    if if_none_match is not None:
        return etag is not None and etag_matches(if_none_match, etag)
    if if_modified_since is not None and last_modified is not None:
        return unmodified_since(if_modified_since, last_modified)
    return False
