"""RFC 9457 problem details: the body of every error the gateway and the admin API return."""

from __future__ import annotations

import json
from http import HTTPStatus

__all__ = ["PROBLEM_CONTENT_TYPE", "default_title", "problem_body"]

PROBLEM_CONTENT_TYPE = b"application/problem+json"

_MEMBERS = frozenset({"type", "status", "title", "detail", "instance"})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def default_title(status: int) -> str:
    """The standard reason phrase for `status`, or a generic one for unregistered codes."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client error" if 400 <= status < 500 else "Error"


def problem_body(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    **extensions: object,
) -> bytes:
    """A compact UTF-8 `application/problem+json` body; an empty `title` means the default one.

    Extension members follow the standard ones; they may not replace them.
    """
    clash = _MEMBERS.intersection(extensions)
    if clash:
        raise ValueError(f"extension members may not replace standard ones: {sorted(clash)}")
    document: dict[str, object] = {
        "type": type_,
        "status": status,
        "title": title or default_title(status),
        "detail": detail,
    }
    if instance is not None:
        document["instance"] = instance
    document.update(extensions)
    text = _ENCODER.encode(document)
    # "<", ">" and "&" only ever occur inside JSON strings, so escaping them changes no value but
    # keeps a body that some client renders as HTML from ever forming markup.
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # A lone surrogate becomes the JSON escape \udc80 instead of an encoding error.
    return text.encode("utf-8", "backslashreplace")
