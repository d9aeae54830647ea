"""Checks of query parameters and event bodies; each failure names its field.

Pure functions over plain values (no Flask, no database): they return typed values or
raise :class:`serve.errors.ApiError` (400) with the field, e.g. ``limit`` or
``events[3].timestamp``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.constants import EVENT_TYPES
from serve.errors import bad_request

BIGINT_MAX = 2**63 - 1
MAX_BATCH = 1000
MAX_CONTEXT_BYTES = 4096
MAX_EVENT_ID_CHARS = 64
MAX_FUTURE = dt.timedelta(days=1)
MIN_TIMESTAMP = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_CATEGORY_CHARS = 50
REC_TYPES = ("personalized", "similar", "trending")
CONTEXTS = ("homepage", "product_page")
_DIGITS = re.compile(r"[0-9]+")
MAX_ID_CHARS = 30  # leading zeros allowed, up to this many characters
_COUNTRY = re.compile(r"[A-Za-z]{2}")


def positive_id(raw: Any, field: str) -> int:
    """A positive BIGINT from an int or a string of digits."""
    if isinstance(raw, bool):
        raise bad_request(field, f"{field} must be a positive integer")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw) and len(raw) <= MAX_ID_CHARS:
        value = int(raw)
    else:
        raise bad_request(field, f"{field} must be a positive integer")
    if not 1 <= value <= BIGINT_MAX:
        raise bad_request(field, f"{field} must be between 1 and {BIGINT_MAX}")
    return value


def limit(raw: str | None, default: int, maximum: int) -> int:
    """``limit``: an integer 1..maximum, ``default`` when absent (an empty value is an
    error, as for every parameter)."""
    if raw is None:
        return default
    if len(raw) > MAX_ID_CHARS or not _DIGITS.fullmatch(raw):
        raise bad_request("limit", f"limit must be an integer between 1 and {maximum}")
    value = int(raw)
    if not 1 <= value <= maximum:
        raise bad_request("limit", f"limit must be an integer between 1 and {maximum}")
    return value


def choice(raw: str | None, field: str, allowed: tuple[str, ...], default: str | None
           ) -> str | None:
    if raw is None:
        return default
    if raw not in allowed:
        raise bad_request(field, f"{field} must be one of {', '.join(allowed)}")
    return raw


def exclude_ids(values: Iterable[str], maximum: int) -> frozenset[int]:
    """``exclude``: ids comma-separated and/or repeated (``[1,2]`` also accepted); an
    empty value or an empty id between commas is an error."""
    ids: set[int] = set()
    given = 0
    for value in values:
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        for part in value.split(","):
            given += 1  # repeats count: the limit bounds the work a request may ask for
            if given > maximum:
                raise bad_request("exclude", f"exclude takes at most {maximum} ids")
            ids.add(positive_id(part.strip(), "exclude"))
    return frozenset(ids)


def category(raw: str | None) -> str | None:
    """``category``: a catalog category name (1..50 characters)."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_CATEGORY_CHARS:
        raise bad_request("category", f"category must have 1 to {MAX_CATEGORY_CHARS} "
                                      "characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise bad_request("category", "category holds a control character")
    return raw


def country(raw: str | None) -> str | None:
    """``country``: an ISO 3166-1 alpha-2 code, any case; returned upper case."""
    if raw is None:
        return None
    if not _COUNTRY.fullmatch(raw):
        raise bad_request("country", "country must be a two-letter ISO 3166-1 code, e.g. FR")
    return raw.upper()


# --- events ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    event_id: int | None
    user_id: int
    item_id: int
    event_type: str
    rating: float | None
    timestamp: dt.datetime  # aware, UTC
    context: str | None  # JSON text

    def row(self) -> tuple:
        return (self.event_id, self.user_id, self.item_id, self.event_type, self.rating,
                self.timestamp, self.context)


def stable_event_id(raw: str) -> int:
    """A stable 63-bit id for a client's event id (blake2b), so retries store once."""
    digest = hashlib.blake2b(raw.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & BIGINT_MAX


def timestamp(raw: Any, field: str, now: dt.datetime) -> dt.datetime:
    """An ISO-8601 time (naive means UTC), not more than a day in the future."""
    if not isinstance(raw, str) or not raw or raw != raw.strip():
        raise bad_request(field, f"{field} must be an ISO-8601 date-time string")
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request(field, f"{field} is not an ISO-8601 date-time: {raw[:40]!r}") \
            from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:  # year 1 or 9999 moved past the calendar's ends
        raise bad_request(field, f"{field} is out of range") from None
    if value > now + MAX_FUTURE:
        raise bad_request(field, f"{field} is more than a day in the future")
    if value < MIN_TIMESTAMP:
        raise bad_request(field, f"{field} is before 1970")
    return value


def event(raw: Any, prefix: str, now: dt.datetime) -> Event:
    """One event object; field names in errors start with ``prefix``."""
    if not isinstance(raw, Mapping):
        raise bad_request(prefix.rstrip(".") or None, "an event must be a JSON object")

    def name(key: str) -> str:
        return prefix + key

    for key in ("user_id", "item_id", "event_type", "timestamp"):
        if raw.get(key) is None:
            raise bad_request(name(key), f"{name(key)} is required", code="missing")
    user_id = positive_id(raw["user_id"], name("user_id"))
    item_id = positive_id(raw["item_id"], name("item_id"))
    event_type = raw["event_type"]
    if event_type not in EVENT_TYPES:
        raise bad_request(name("event_type"),
                          f"{name('event_type')} must be one of {', '.join(EVENT_TYPES)}")
    ts = timestamp(raw["timestamp"], name("timestamp"), now)

    rating = raw.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) \
                or not 0 <= rating <= 10:
            raise bad_request(name("rating"), f"{name('rating')} must be a number 0..10")
        # Stored as REAL: keep 4 decimals (a denormal double would not fit).
        rating = round(float(rating), 4)

    context = raw.get("context")
    context_json = None
    if context is not None:
        if not isinstance(context, Mapping):
            raise bad_request(name("context"), f"{name('context')} must be a JSON object")
        try:
            context_json = json.dumps(context, separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False)
        except ValueError:
            raise bad_request(name("context"),
                              f"{name('context')} holds NaN or Infinity") from None
        if "\x00" in context_json or "\\u0000" in context_json:
            raise bad_request(name("context"), f"{name('context')} holds a NUL character")
        if len(context_json.encode("utf-8")) > MAX_CONTEXT_BYTES:
            raise bad_request(name("context"),
                              f"{name('context')} is larger than {MAX_CONTEXT_BYTES} bytes")

    event_id = raw.get("event_id")
    stored_id = None
    if event_id is not None:
        if isinstance(event_id, bool) or not isinstance(event_id, (str, int)):
            raise bad_request(name("event_id"), f"{name('event_id')} must be a string or integer")
        text = str(event_id)
        if not text or len(text) > MAX_EVENT_ID_CHARS:
            raise bad_request(name("event_id"),
                              f"{name('event_id')} must have 1 to {MAX_EVENT_ID_CHARS} characters")
        stored_id = stable_event_id(text)
    return Event(stored_id, user_id, item_id, event_type, rating, ts, context_json)


def event_body(body: Any, now: dt.datetime | None = None) -> list[Event]:
    """A POSTed body: one event object, or ``{"events": [...]}`` (1..MAX_BATCH)."""
    now = now or dt.datetime.now(dt.UTC)
    if not isinstance(body, Mapping):
        raise bad_request(None, "the body must be a JSON object")
    if "events" not in body:
        return [event(body, "", now)]
    batch = body["events"]
    if not isinstance(batch, list):
        raise bad_request("events", "events must be a list of event objects")
    if not 1 <= len(batch) <= MAX_BATCH:
        raise bad_request("events", f"events must hold 1 to {MAX_BATCH} events")
    return [event(raw, f"events[{i}].", now) for i, raw in enumerate(batch)]
