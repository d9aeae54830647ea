"""API-key checks for the reader: which requests need a key, and verifying one.

A request carries its key in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
Missing, malformed, unknown or revoked: 401; valid but without the scope: 403. The key
never appears in a log line, an error message or a metric.

Stored keys (serve/apikeys.py) are cached per worker for ``ttl_s`` (5 s): a revocation
takes effect within that time. While the database is unreachable, keys already seen keep
working from the cache; a key never seen gets 503 (it cannot be checked).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg2
from flask import g, request

from serve import apikeys
from serve.apikeys import KeyRecord
from serve.errors import ApiError, forbidden, unauthorized, unavailable
from serve.store import DatabaseUnavailable, Store

log = logging.getLogger(__name__)

KEY_TTL_S = 5.0
MAX_CACHED = 10_000

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def flag(value: object, name: str) -> bool:
    """A boolean setting given as a bool or a string (``true``/``false``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


class KeyCache:
    """Stored keys by public prefix, read through the store and kept ``ttl_s``."""

    def __init__(self, store: Store, ttl_s: float = KEY_TTL_S, clock=time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[KeyRecord | None, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prefix: str) -> KeyRecord | None:
        now = self.clock()
        hit = self._entries.get(prefix)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        try:
            record = apikeys.record_from_row(self.store.read_key(prefix))
        except DatabaseUnavailable:
            if hit is not None:
                return hit[0]  # known key, database away: keep trusting the last answer
            raise
        with self._lock:
            if len(self._entries) >= MAX_CACHED:
                self._entries.clear()
            self._entries[prefix] = (record, now)
        return record


def presented_key() -> str | None:
    """The key in ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    raw = request.headers.get("X-API-Key")
    if raw:
        return raw
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def require(scope: str, cache: KeyCache, metrics) -> KeyRecord:
    """The request's key if it grants ``scope``; raises the 401/403/503 ApiError."""

    def refuse(reason: str, error: ApiError) -> ApiError:
        metrics.inc("recs_auth_failures_total", reason=reason)
        return error

    raw = presented_key()
    if not raw:
        raise refuse("missing", unauthorized(
            "an API key is required: send it in the X-API-Key header "
            "(or Authorization: Bearer)"))
    parsed = apikeys.parse(raw)
    if parsed is None:
        raise refuse("invalid", unauthorized("invalid API key"))
    prefix, secret = parsed
    try:
        record = cache.lookup(prefix)
    except DatabaseUnavailable:
        raise unavailable("the API key cannot be checked now, retry later") from None
    except psycopg2.Error:
        log.exception("API key lookup failed")
        raise unavailable("the API key cannot be checked now, retry later") from None
    if record is None or not apikeys.matches(record, secret):
        raise refuse("invalid", unauthorized("invalid API key"))
    if record.revoked:
        raise refuse("revoked", unauthorized("this API key was revoked"))
    if not record.grants(scope):
        raise refuse("scope", forbidden(f"this API key lacks the {scope!r} scope"))
    g.api_key_id = record.id
    return record
