"""Catalog and user writes: ``PUT /api/v1/items/{item_id}``, ``PUT /api/v1/items`` (a
batch of up to 1,000, all or nothing) and ``PUT /api/v1/users/{user_id}`` (onboarding
preferences). Keys with the ``catalog`` or ``admin`` scope.

* An item's fields given replace the stored ones; fields left out keep theirs (a new
  item needs a ``title``). A change of title, category, tags, description or attributes
  stamps ``updated_at``: the next hourly run embeds the item and places it
  (jobs/hourly.py reads new and changed items from ``items`` by ``updated_at``).
* ``available: false`` withdraws an item: every worker drops it from every answer at its
  next block refresh (serve/blocks.py, ``RECS_BLOCKS_REFRESH_S``, 2 s), and the jobs keep
  it out of the lists they write (jobs/rules.py). ``true`` brings it back.
* A user's preferences (``categories``, liked ``items``) are what the reader answers a
  user without a precomputed list with (serve/recommendations.py, the cold-start path)
  and what the daily funnel uses for users with few events (jobs/funnel.py).

Ids are the client's (serve/ids.py): new external ids are mapped here.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2.extras
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest

from serve import validation
from serve.app import services
from serve.errors import ApiError, bad_request, unavailable
from serve.store import DatabaseUnavailable
from serve.validation import ItemPut

bp = Blueprint("catalog", __name__)

# The catalog's text: a change here is a change the hourly run must embed.
TEXT_FIELDS = ("title", "category", "tags", "description", "attributes")
DEFAULTS: dict[str, Any] = {"category": None, "tags": [], "description": None,
                            "attributes": "{}", "available": True}

LOCK_SQL = """
SELECT item_id, title, category, tags, description, attributes::text, available
FROM items WHERE item_id = ANY(%s) ORDER BY item_id FOR UPDATE
"""
UPSERT_SQL = """
INSERT INTO items AS i (item_id, title, category, tags, description, attributes, available,
                        created_at, updated_at)
VALUES %s
ON CONFLICT (item_id) DO UPDATE
   SET title = EXCLUDED.title, category = EXCLUDED.category, tags = EXCLUDED.tags,
       description = EXCLUDED.description, attributes = EXCLUDED.attributes,
       available = EXCLUDED.available,
       updated_at = CASE WHEN (i.title, i.category, i.tags, i.description, i.attributes)
                              IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.category,
                                                EXCLUDED.tags, EXCLUDED.description,
                                                EXCLUDED.attributes)
                         THEN EXCLUDED.updated_at ELSE i.updated_at END
 WHERE (i.title, i.category, i.tags, i.description, i.attributes, i.available)
       IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.category, EXCLUDED.tags,
                         EXCLUDED.description, EXCLUDED.attributes, EXCLUDED.available)
"""
UPSERT_TEMPLATE = "(%s, %s, %s, %s::text[], %s, %s::jsonb, %s, now(), now())"
USER_SQL = """
INSERT INTO users AS u (user_id, preferences) VALUES (%s, %s::jsonb)
ON CONFLICT (user_id) DO UPDATE SET preferences = EXCLUDED.preferences
"""


def _body() -> Any:
    """The request's JSON body (415 when not declared JSON, 400 when unreadable)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON (Content-Type: application/json)")
    try:
        return request.get_json()
    except BadRequest:
        raise bad_request(None, "the body is not valid JSON", code="invalid_json") from None
    except RecursionError:
        raise bad_request(None, "the body is nested too deeply", code="invalid_json") \
            from None


def merge(stored: dict[str, Any] | None, given: dict[str, Any]) -> dict[str, Any]:
    """The item's fields after a PUT: the given ones over the stored ones (or over the
    defaults for a new item)."""
    return {**(stored if stored is not None else DEFAULTS), **given}


def put_items(puts: list[ItemPut]) -> dict[str, int]:
    """Write ``puts`` in one transaction; {"created", "updated", "unchanged"}."""
    svc = services()
    items = svc.names.create("item", [p.item_id for p in puts])
    internal = [items[p.item_id] for p in puts]
    with svc.store.transaction() as cur:
        cur.execute(LOCK_SQL, (internal,))
        stored = {r[0]: {"title": r[1], "category": r[2], "tags": list(r[3] or []),
                         "description": r[4], "attributes": r[5], "available": r[6]}
                  for r in cur.fetchall()}
        rows = []
        for put, iid in zip(puts, internal, strict=True):
            fields = merge(stored.get(iid), put.fields)
            if "title" not in fields:
                raise bad_request(f"{put.field_prefix}title",
                                  f"{put.field_prefix}title is required for a new item",
                                  code="missing")
            rows.append((iid, fields["title"], fields["category"], fields["tags"],
                         fields["description"], fields["attributes"], fields["available"]))
        changed = psycopg2.extras.execute_values(
            cur, UPSERT_SQL + " RETURNING i.item_id", rows, template=UPSERT_TEMPLATE,
            page_size=max(len(rows), 1), fetch=True)
    changed_ids = {r[0] for r in changed}
    created = sum(1 for iid in internal if iid not in stored)
    updated = sum(1 for iid in internal if iid in stored and iid in changed_ids)
    return {"created": created, "updated": updated,
            "unchanged": len(internal) - created - updated}


@bp.put("/api/v1/items/<item_id>")
def put_item(item_id: str) -> Response:
    services().require("catalog")
    given = validation.entity_id(item_id, "item_id")
    put = validation.item_put(_body(), "", path_id=given)
    return _written(lambda: put_items([put]))


@bp.put("/api/v1/items")
def put_item_batch() -> Response:
    services().require("catalog")
    puts = validation.items_put(_body())
    return _written(lambda: put_items(puts))


@bp.put("/api/v1/users/<user_id>")
def put_user(user_id: str) -> Response:
    svc = services()
    svc.require("catalog")
    given = validation.entity_id(user_id, "user_id")
    prefs = validation.user_put(_body())

    def write() -> dict[str, Any]:
        uid = svc.names.create("user", [given])[given]
        liked = svc.names.create("item", prefs.items)
        stored = {"categories": prefs.categories, "items": [liked[i] for i in prefs.items]}
        with svc.store.transaction() as cur:
            cur.execute(USER_SQL, (uid, json.dumps(stored)))
        return {"user_id": given, "preferences": {"categories": prefs.categories,
                                                  "items": prefs.items}}

    return _written(write)


def _written(write) -> Response:
    """``write()``'s result as 200 JSON; 503 with Retry-After while the database is down
    (nothing was written)."""
    try:
        return jsonify(write())
    except DatabaseUnavailable:
        raise unavailable() from None
