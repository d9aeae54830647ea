"""Checks of query parameters and event bodies; each failure names its field.

Pure functions over plain values (no Flask, no database): they return typed values or
raise :class:`serve.errors.ApiError` (400) with the field, e.g. ``limit`` or
``events[3].timestamp``; an event outside the accepted time window is a 422
(``outside_window``).

Every string that may reach the database is checked to be valid Unicode without NUL:
JSON allows a lone surrogate (``"\ud800"``) and ``"\u0000"``, which UTF-8 and Postgres
JSONB refuse; nesting is bounded before anything recursive runs on it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core import ids
from core.constants import EVENT_TYPES
from core.ids import stable_event_id  # the one definition, shared with the loaders
from serve.errors import ApiError, bad_request

BIGINT_MAX = 2**63 - 1
MAX_BATCH = 1000
MAX_CONTEXT_BYTES = 4096
MAX_CONTEXT_DEPTH = 8  # objects/lists inside ``context`` (the context itself is level 1)
MAX_EVENT_ID_CHARS = 64
DEFAULT_MAX_AGE = dt.timedelta(days=30)  # the settings' defaults (event_max_*_days)
DEFAULT_MAX_AHEAD = dt.timedelta(days=1)
MIN_TIMESTAMP = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_CATEGORY_CHARS = 50
REC_TYPES = ("personalized", "similar", "trending")
CONTEXTS = ("homepage", "product_page")
_DIGITS = re.compile(r"[0-9]+")
MAX_ID_CHARS = 30  # leading zeros allowed, up to this many characters
_COUNTRY = re.compile(r"[A-Za-z]{2}")


def entity_id(raw: Any, field: str) -> int | str:
    """A user or item id as the client gives it: the engine's id (a positive integer below
    10^15, or its digits) or an external id (core/ids.py: 1 to 256 characters, no
    whitespace or control character, not all zeros), which the caller maps."""
    value = ids.parse(raw)
    if value is None:
        if isinstance(raw, str):
            why = ids.problem(raw) or "is not an id"
            raise bad_request(field, f"{field} {why}: an id is a positive integer or 1 to "
                                     f"{ids.MAX_EXTERNAL_CHARS} characters without "
                                     "whitespace or a slash")
        raise bad_request(field, f"{field} must be a positive integer or a string id")
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


def exclude_ids(values: Iterable[str], maximum: int) -> frozenset[int | str]:
    """``exclude``: ids comma-separated and/or repeated (``[1,2]`` also accepted); an
    empty value or an empty id between commas is an error."""
    found: set[int | str] = set()
    given = 0
    for value in values:
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        for part in value.split(","):
            given += 1  # repeats count: the limit bounds the work a request may ask for
            if given > maximum:
                raise bad_request("exclude", f"exclude takes at most {maximum} ids")
            found.add(entity_id(part.strip(), "exclude"))
    return frozenset(found)


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
class Window:
    """Accepted event times: ``[now - max_age, now + max_ahead]``."""

    max_age: dt.timedelta = DEFAULT_MAX_AGE
    max_ahead: dt.timedelta = DEFAULT_MAX_AHEAD

    @classmethod
    def of_days(cls, max_age_days: float, max_ahead_days: float) -> Window:
        return cls(dt.timedelta(days=max_age_days), dt.timedelta(days=max_ahead_days))


@dataclass(frozen=True)
class Event:
    event_id: int | None
    user_id: int | str  # a str: an external id, mapped before the event is stored
    item_id: int | str
    event_type: str
    rating: float | None
    timestamp: dt.datetime  # aware, UTC
    context: str | None  # JSON text
    key_id: int | None = None  # api_keys.id of the key that sent it
    request_id: str | None = None  # the served list it answers (exposures.request_id)

    def row(self) -> tuple:
        """The row ``Store.insert_events`` stores: (event_id, user_id, item_id,
        event_type, rating, timestamp, context_json, key_id, request_id)."""
        return (self.event_id, self.user_id, self.item_id, self.event_type, self.rating,
                self.timestamp, self.context, self.key_id, self.request_id)


def clean_text(raw: str, field: str) -> str:
    """``raw`` if it is valid Unicode (no lone surrogate) without a NUL character."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(field, f"{field} holds invalid Unicode (a lone surrogate)") \
            from None
    if "\x00" in raw:
        raise bad_request(field, f"{field} holds a NUL character")
    return raw


def _check_tree(value: Any, field: str) -> None:
    """Nesting within MAX_CONTEXT_DEPTH, every key and string clean (iterative: a deep
    value cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            clean_text(node, field)
        elif isinstance(node, (Mapping, list)):
            if depth > MAX_CONTEXT_DEPTH:
                raise bad_request(field, f"{field} is nested deeper than "
                                         f"{MAX_CONTEXT_DEPTH} levels")
            if isinstance(node, Mapping):
                for key, item in node.items():
                    clean_text(key, field)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def timestamp(raw: Any, field: str, now: dt.datetime, window: Window = Window()
              ) -> dt.datetime:
    """An ISO-8601 time (naive means UTC) inside ``window`` around ``now``: malformed is a
    400, outside the window a 422."""
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
    if value < MIN_TIMESTAMP:
        raise bad_request(field, f"{field} is before 1970")
    if value > now + window.max_ahead or value < now - window.max_age:
        raise outside_window(field, now, window, too_old=value < now)
    return value


def _days(delta: dt.timedelta) -> str:
    days = delta / dt.timedelta(days=1)
    text = f"{days:g}"
    return f"{text} day" if text == "1" else f"{text} days"


def outside_window(field: str, now: dt.datetime, window: Window, too_old: bool
                   ) -> ApiError:
    """A 422: a well-formed time outside the accepted window."""
    first = (now - window.max_age).isoformat(timespec="seconds")
    last = (now + window.max_ahead).isoformat(timespec="seconds")
    hint = ("older history is loaded with recs load" if too_old
            else "check the client's clock")
    return ApiError(422, "outside_window",
                    f"{field} is outside the accepted window: events may be at most "
                    f"{_days(window.max_age)} old and {_days(window.max_ahead)} ahead "
                    f"(at present {first} to {last}); {hint}", field)


def event(raw: Any, prefix: str, now: dt.datetime, window: Window = Window(),
          key_id: int | None = None) -> Event:
    """One event object; field names in errors start with ``prefix``."""
    if not isinstance(raw, Mapping):
        raise bad_request(prefix.rstrip(".") or None, "an event must be a JSON object")

    def name(key: str) -> str:
        return prefix + key

    for key in ("user_id", "item_id", "event_type", "timestamp"):
        if raw.get(key) is None:
            raise bad_request(name(key), f"{name(key)} is required", code="missing")
    user_id = entity_id(raw["user_id"], name("user_id"))
    item_id = entity_id(raw["item_id"], name("item_id"))
    event_type = raw["event_type"]
    if event_type not in EVENT_TYPES:
        raise bad_request(name("event_type"),
                          f"{name('event_type')} must be one of {', '.join(EVENT_TYPES)}")
    ts = timestamp(raw["timestamp"], name("timestamp"), now, window)

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
        _check_tree(context, name("context"))
        try:
            context_json = json.dumps(context, separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False)
        except ValueError:
            raise bad_request(name("context"),
                              f"{name('context')} holds NaN or Infinity") from None
        if len(context_json.encode("utf-8")) > MAX_CONTEXT_BYTES:
            raise bad_request(name("context"),
                              f"{name('context')} is larger than {MAX_CONTEXT_BYTES} bytes")

    event_id = raw.get("event_id")
    stored_id = None
    if event_id is not None:
        if isinstance(event_id, bool) or not isinstance(event_id, (str, int)):
            raise bad_request(name("event_id"), f"{name('event_id')} must be a string or integer")
        text = clean_text(str(event_id), name("event_id"))
        if not text or len(text) > MAX_EVENT_ID_CHARS:
            raise bad_request(name("event_id"),
                              f"{name('event_id')} must have 1 to {MAX_EVENT_ID_CHARS} characters")
        stored_id = stable_event_id(text)
    return Event(stored_id, user_id, item_id, event_type, rating, ts, context_json, key_id,
                 request_id(raw.get("request_id"), name("request_id")))


def request_id(raw: Any, field: str) -> str | None:
    """An optional request id (a UUID, as the reader returns it): 422 naming ``field``
    otherwise."""
    if raw is None:
        return None
    try:
        if not isinstance(raw, str) or len(raw) > 64:
            raise ValueError
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(422, "invalid_request_id",
                       f"{field} must be a UUID as returned in a response's request_id",
                       field) from None


def event_body(body: Any, now: dt.datetime | None = None, window: Window = Window(),
               key_id: int | None = None) -> list[Event]:
    """A POSTed body: one event object, or ``{"events": [...]}`` (1..MAX_BATCH); every
    event carries ``key_id`` (the key that sent it)."""
    now = now or dt.datetime.now(dt.UTC)
    if not isinstance(body, Mapping):
        raise bad_request(None, "the body must be a JSON object")
    if "events" not in body:
        return [event(body, "", now, window, key_id)]
    batch = body["events"]
    if not isinstance(batch, list):
        raise bad_request("events", "events must be a list of event objects")
    if not 1 <= len(batch) <= MAX_BATCH:
        raise bad_request("events", f"events must hold 1 to {MAX_BATCH} events")
    return [event(raw, f"events[{i}].", now, window, key_id) for i, raw in enumerate(batch)]


# --- catalog and users (PUT) ---------------------------------------------------------------

MAX_ITEMS_BATCH = 1000
MAX_TITLE_CHARS = 1000
MAX_DESCRIPTION_CHARS = 10_000
MAX_TAGS = 100
MAX_TAG_CHARS = 100
MAX_ATTRIBUTES_BYTES = 4096
MAX_PREFERENCES = 100
ITEM_FIELDS = ("title", "category", "tags", "description", "attributes", "available")


@dataclass(frozen=True)
class ItemPut:
    """One item of a PUT: its id as the client gave it and the fields given (absent
    fields keep their stored values; ``attributes`` as JSON text)."""

    item_id: int | str
    fields: dict[str, Any]
    field_prefix: str = ""


def _text(raw: Any, field: str, max_chars: int, nullable: bool) -> str | None:
    if raw is None and nullable:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise bad_request(field, f"{field} must be a string with a non-space character"
                          + (" or null" if nullable else ""))
    if len(raw) > max_chars:
        raise bad_request(field, f"{field} must have at most {max_chars} characters")
    return clean_text(raw.strip(), field)


def item_put(raw: Any, prefix: str = "", path_id: int | str | None = None) -> ItemPut:
    """One item object of ``PUT /api/v1/items[/{id}]``; errors name ``prefix`` + field."""
    where = prefix.rstrip(".") or None
    if not isinstance(raw, Mapping):
        raise bad_request(where, "an item must be a JSON object")
    unknown = [k for k in raw if k not in (*ITEM_FIELDS, "item_id")]
    if unknown:
        raise bad_request(prefix + str(unknown[0]), f"{prefix}{unknown[0]} is not an item "
                          f"field ({', '.join(ITEM_FIELDS)})")
    if path_id is not None and "item_id" in raw:
        raise bad_request("item_id", "item_id is given by the path, not in the body")
    if path_id is None:
        if raw.get("item_id") is None:
            raise bad_request(prefix + "item_id", f"{prefix}item_id is required", code="missing")
        item_id = entity_id(raw["item_id"], prefix + "item_id")
    else:
        item_id = path_id
    fields: dict[str, Any] = {}
    if "title" in raw:
        fields["title"] = _text(raw["title"], prefix + "title", MAX_TITLE_CHARS, False)
    if "category" in raw:
        fields["category"] = _text(raw["category"], prefix + "category",
                                   MAX_CATEGORY_CHARS, True)
    if "description" in raw:
        fields["description"] = _text(raw["description"], prefix + "description",
                                      MAX_DESCRIPTION_CHARS, True)
    if "tags" in raw:
        tags = raw["tags"]
        name = prefix + "tags"
        if tags is None:
            tags = []
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise bad_request(name, f"{name} must be a list of at most {MAX_TAGS} strings")
        fields["tags"] = list(dict.fromkeys(
            _text(t, f"{name}[{i}]", MAX_TAG_CHARS, False) for i, t in enumerate(tags)))
    if "attributes" in raw:
        name = prefix + "attributes"
        attrs = {} if raw["attributes"] is None else raw["attributes"]
        if not isinstance(attrs, Mapping):
            raise bad_request(name, f"{name} must be a JSON object")
        _check_tree(attrs, name)
        try:
            text = json.dumps(attrs, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, sort_keys=True)
        except ValueError:
            raise bad_request(name, f"{name} holds NaN or Infinity") from None
        if len(text.encode("utf-8")) > MAX_ATTRIBUTES_BYTES:
            raise bad_request(name, f"{name} is larger than {MAX_ATTRIBUTES_BYTES} bytes")
        fields["attributes"] = text
    if "available" in raw:
        if not isinstance(raw["available"], bool):
            raise bad_request(prefix + "available", f"{prefix}available must be true or false")
        fields["available"] = raw["available"]
    return ItemPut(item_id, fields, prefix)


def items_put(body: Any) -> list[ItemPut]:
    """``PUT /api/v1/items``: ``{"items": [...]}``, 1..1000 items, each id once."""
    if not isinstance(body, Mapping) or "items" not in body:
        raise bad_request("items", "the body must be {\"items\": [...]}", code="missing")
    unknown = [k for k in body if k != "items"]
    if unknown:
        raise bad_request(str(unknown[0]), f"{unknown[0]} is not known (items)")
    batch = body["items"]
    if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_ITEMS_BATCH:
        raise bad_request("items", f"items must be a list of 1 to {MAX_ITEMS_BATCH} items")
    out = [item_put(raw, f"items[{i}].") for i, raw in enumerate(batch)]
    seen: set[int | str] = set()
    for i, put in enumerate(out):
        if put.item_id in seen:
            raise bad_request(f"items[{i}].item_id", f"items[{i}].item_id appears twice")
        seen.add(put.item_id)
    return out


@dataclass(frozen=True)
class Preferences:
    """Onboarding answers: category names and liked items (the client's ids)."""

    categories: list[str]
    items: list[int | str]


def user_put(body: Any) -> Preferences:
    """``PUT /api/v1/users/{id}``: ``{"preferences": {"categories": [...], "items": [...]}}``."""
    if not isinstance(body, Mapping):
        raise bad_request(None, "the body must be a JSON object")
    unknown = [k for k in body if k != "preferences"]
    if unknown:
        raise bad_request(str(unknown[0]), f"{unknown[0]} is not a user field (preferences)")
    prefs = body.get("preferences")
    if not isinstance(prefs, Mapping):
        raise bad_request("preferences", "preferences must be a JSON object", code="missing")
    unknown = [k for k in prefs if k not in ("categories", "items")]
    if unknown:
        raise bad_request(f"preferences.{unknown[0]}", f"preferences.{unknown[0]} is not "
                          "known (categories, items)")
    cats = prefs.get("categories", [])
    if not isinstance(cats, list) or len(cats) > MAX_PREFERENCES:
        raise bad_request("preferences.categories", "preferences.categories must be a list "
                          f"of at most {MAX_PREFERENCES} category names")
    categories = list(dict.fromkeys(
        _text(c, f"preferences.categories[{i}]", MAX_CATEGORY_CHARS, False)
        for i, c in enumerate(cats)))
    liked = prefs.get("items", [])
    if not isinstance(liked, list) or len(liked) > MAX_PREFERENCES:
        raise bad_request("preferences.items", "preferences.items must be a list of at most "
                          f"{MAX_PREFERENCES} item ids")
    items = list(dict.fromkeys(entity_id(v, f"preferences.items[{i}]")
                               for i, v in enumerate(liked)))
    return Preferences(categories, items)
