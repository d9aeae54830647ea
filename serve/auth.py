"""API-key checks for the reader: which requests need a key, and verifying one.

A request carries its key in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
Missing, malformed, unknown or revoked: 401; valid but without the scope: 403. The key
never appears in a log line, an error message or a metric.

Stored keys (serve/apikeys.py) are cached per worker for ``ttl_s`` (5 s): a revocation
takes effect within that time. While the database is unreachable, keys already seen keep
working from the cache; a key never seen gets 503 (it cannot be checked).

Each authenticated key draws from a token bucket of its own in each worker process
(``key_burst`` requests at once, refilled at ``key_rate_per_s``; 0 disables): over it, the
answer is 429 with ``Retry-After`` and ``recs_rate_limited_total{scope}`` counts it. The
limit is per process, so a server of N workers lets a key through at up to N times it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict

import psycopg2
from flask import current_app, g, request

from serve import apikeys
from serve.apikeys import KeyRecord
from serve.errors import ApiError, forbidden, rate_limited, unauthorized, unavailable
from serve.store import DatabaseUnavailable, Store

log = logging.getLogger(__name__)

KEY_TTL_S = 5.0
MAX_CACHED = 10_000
MAX_BUCKETS = 10_000  # rate-limit buckets per process (keys seen recently)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def flag(value: object, name: str, default: bool) -> bool:
    """A boolean setting given as a bool or a string (``true``/``false``, ``1``/``0``);
    None, an empty or blank string mean ``default`` (``RECS_X=`` is "not set")."""
    if isinstance(value, bool):
        return value
    if value is None:
        return default
    text = str(value).strip().lower()
    if not text:
        return default
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


class TokenBuckets:
    """A token bucket per key id: ``burst`` tokens, refilled at ``rate_per_s``.

    At most ``max_buckets`` are kept: when full, the least recently used bucket goes (a
    key seen again starts with a full bucket, as a key not seen for burst / rate seconds
    would have anyway).
    """

    def __init__(self, rate_per_s: float, burst: int, max_buckets: int = MAX_BUCKETS,
                 clock=time.monotonic) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key_id: int) -> float:
        """Take one token for ``key_id``: 0.0 if there was one, else the seconds until
        there will be one (nothing taken)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            hit = self._buckets.pop(key_id, None)
            if hit is None:
                tokens = self.burst
                while len(self._buckets) >= self.max_buckets:
                    self._buckets.popitem(last=False)
            else:
                tokens = min(self.burst, hit[0] + (now - hit[1]) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _buckets() -> TokenBuckets:
    """This app's buckets (one set per worker process), built from its settings."""
    ext = current_app.extensions
    buckets = ext.get("recs_rate")
    if buckets is None:
        settings = ext["recs"].settings
        buckets = ext.setdefault("recs_rate", TokenBuckets(settings.key_rate_per_s,
                                                           settings.key_burst))
    return buckets


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
    """The request's key if it grants ``scope``; raises the 401/403/429/503 ApiError.
    Sets ``g.api_key_id`` (the key's id, recorded with the events it posts)."""

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
    wait = _buckets().take(record.id)
    if wait > 0:
        metrics.inc("recs_rate_limited_total", scope=scope)
        raise rate_limited(math.ceil(wait))
    if not record.grants(scope):
        raise refuse("scope", forbidden(f"this API key lacks the {scope!r} scope"))
    g.api_key_id = record.id
    return record
