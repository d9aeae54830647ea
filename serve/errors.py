"""JSON errors for every failure: ``{"error": {"code", "message", "field"}}``.

No HTML page and no stack trace ever leaves the reader: HTTP errors raised by Flask or
Werkzeug (404, 405, 413, 415...) and unexpected exceptions are all turned into the same
JSON shape; unexpected ones are logged with their traceback server-side.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

# Seconds a client should wait before retrying an event post while the database is down.
RETRY_AFTER_S = 1

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as JSON with ``status`` (a client error names its ``field``)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def bad_request(field: str | None, message: str, code: str = "invalid") -> ApiError:
    """A 400 naming the offending parameter or body field."""
    return ApiError(400, code, message, field)


def unavailable(message: str = "database unavailable, retry later") -> ApiError:
    """A 503 with ``Retry-After``: nothing was stored."""
    return ApiError(503, "unavailable", message, None, {"Retry-After": str(RETRY_AFTER_S)})


def unauthorized(message: str) -> ApiError:
    """A 401: no API key, or one that is malformed, unknown or revoked."""
    return ApiError(401, "unauthorized", message, "X-API-Key",
                    {"WWW-Authenticate": 'Bearer realm="recs"'})


def forbidden(message: str) -> ApiError:
    """A 403: a valid API key without the scope the endpoint needs."""
    return ApiError(403, "forbidden", message, "X-API-Key")


def rate_limited(retry_after_s: int) -> ApiError:
    """A 429: the key is over its rate; ``Retry-After`` says when one request fits."""
    wait = max(1, int(retry_after_s))
    return ApiError(429, "rate_limited",
                    f"this API key is over its request rate; retry after {wait} s",
                    "X-API-Key", {"Retry-After": str(wait)})


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": {"code": code, "message": message, "field": field}})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def register(app: Flask) -> None:
    """Install the JSON handlers on ``app``."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        allow = getattr(exc, "valid_methods", None)
        if status == 405 and allow:
            headers["Allow"] = ", ".join(sorted(allow))
        message = exc.description or exc.name
        return error_response(status, _CODES.get(status, exc.name.lower().replace(" ", "_")),
                              message, None, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error: %s", exc)
        return error_response(500, "internal", "internal server error")
