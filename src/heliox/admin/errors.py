"""Admin API errors, all answered as RFC 9457 `application/problem+json` with `no-store`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from heliox.core.problem import PROBLEM_CONTENT_TYPE as _PROBLEM_CONTENT_TYPE
from heliox.core.problem import default_title, problem_body

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = _PROBLEM_CONTENT_TYPE.decode()
NO_STORE = "no-store"
DB_RETRY_AFTER_SECONDS = 5
# SQLSTATE classes that mean "the database cannot serve you right now", not "your request is bad":
# connection exceptions, insufficient resources, operator intervention (shutdown, statement
# timeout), unknown database, failed authentication, serialization failure and deadlock.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "3D", "28", "40001", "40P01", "55P03")


# RFC 9110 names where Python's table still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


class FieldError(BaseModel):
    """One invalid field of a 422 (for the OpenAPI schema)."""

    loc: list[str | int]
    msg: str
    type: str


class ProblemDetail(BaseModel):
    """RFC 9457 problem document (for the OpenAPI schema). Other members may follow: `errors`
    on a 422; on a 429 or 503 the seconds to wait, as in its Retry-After."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] | None = None


class AdminError(Exception):
    """An error with a status; the message is safe to show to the admin."""

    status = 400

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


class Unauthorized(AdminError):
    status = 401

    def __init__(self) -> None:
        # One body whatever was wrong, so a caller learns nothing about the key.
        super().__init__(
            "a valid X-Admin-Key header is required",
            headers={"WWW-Authenticate": 'AdminKey realm="heliox-admin"'},
        )


class NotFound(AdminError):
    status = 404

    def __init__(self, entity: str, entity_id: object) -> None:
        super().__init__(f"no {entity} with id {entity_id}")


class Conflict(AdminError):
    status = 409


class Unprocessable(AdminError):
    """A well-formed request whose values cannot be accepted (422), with field errors."""

    status = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("the request has invalid fields", errors=errors)


def field_error(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": type_}


def invalid_field(loc: Sequence[str | int], msg: str) -> Unprocessable:
    return Unprocessable([field_error(loc, msg)])


def problem_response(
    status: int,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    title = _TITLES.get(status) or default_title(status)
    response = Response(
        problem_body(status, title, detail, **extensions),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
    response.headers["Cache-Control"] = NO_STORE
    return response


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Field errors without the submitted values (they may hold secrets or be huge)."""
    errors = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.append(field_error(err.get("loc", ()), msg, str(err.get("type", "value_error"))))
    return errors


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors a retry can fix: the database is down, unreachable, busy or timing out."""
    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError,
    ):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    # Raised before SQLAlchemy wraps anything: refused or timed-out connects.
    return isinstance(exc, OSError | TimeoutError)


def problem_for_exception(exc: Exception) -> Response:
    if isinstance(exc, AdminError):
        return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extensions)
    if isinstance(exc, RequestValidationError):
        errors = validation_errors(exc)
        return problem_response(422, "the request has invalid fields", errors=errors)
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else ""
        return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))
    if isinstance(exc, sa_exc.IntegrityError):
        # The explicit checks catch the usual cases first; this is the race between two writers.
        return problem_response(409, "the change conflicts with the current data; reload and retry")
    if is_database_unavailable(exc):
        log.warning("admin request failed, database unavailable: %s", exc)
        return problem_response(
            503,
            "database unavailable, retry",
            headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )
    log.exception("admin request failed", exc_info=exc)
    return problem_response(500, "internal error; the details are in the gateway's log")
