"""The reader with clients' own ids (``user_7``, ``item_10``), as the recs_reader role.

The fixture version of tests/test_serve.py is published, then user 7 and items 10, 11, 20,
21 are renumbered as mapped ids (10^15 + id) with the external names ``user_7``,
``item_10``, ...: every path, parameter, body and answer must speak those names.
"""

from __future__ import annotations

import psycopg2
import pytest

from core import ids
from core.settings import READER_ROLE
from serve.app import create_app
from tests.conftest import role_url
from tests.test_serve import event, make_key, publish_fixture

B = ids.MAPPED_ID_BASE
ITEMS = (10, 11, 20, 21)


def sql(dsn: str, query: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _renumber(column: str) -> str:
    return (f"ARRAY(SELECT CASE WHEN x = ANY(%(items)s) THEN x + {B} ELSE x END "
            f"FROM unnest({column}) WITH ORDINALITY AS u(x, o) ORDER BY o)")


@pytest.fixture
def app(settings, dsn):
    publish_fixture(dsn)
    items = list(ITEMS)
    sql(dsn, "INSERT INTO external_ids (entity_type, external_id, internal_id) "
             "SELECT 'item', 'item_' || i, %s + i FROM unnest(%s::bigint[]) AS i", (B, items))
    sql(dsn, "INSERT INTO external_ids VALUES ('user', 'user_7', %s)", (B + 7,))
    sql(dsn, "SELECT setval('external_id_seq', %s)", (B + 100,))  # past the ids set here
    sql(dsn, "INSERT INTO items (item_id, title, category) SELECT %s + item_id, title, category "
             "FROM items WHERE item_id = ANY(%s)", (B, items))
    sql(dsn, f"UPDATE recommendations SET user_id = user_id + {B} WHERE user_id = 7")
    sql(dsn, f"UPDATE recommendations SET items = {_renumber('items')}, "
             f"reason_item_ids = {_renumber('reason_item_ids')}", {"items": items})
    sql(dsn, f"UPDATE similar_items SET items = {_renumber('items')}, "
             f"item_id = CASE WHEN item_id = ANY(%(items)s) THEN item_id + {B} ELSE item_id END",
        {"items": items})
    sql(dsn, f"UPDATE trending SET items = {_renumber('items')}", {"items": items})
    reader = settings.replace(reader_database_url=role_url(dsn, READER_ROLE))
    app = create_app({"SETTINGS": reader, "TESTING": True, "STORE_BACKOFF_S": 0.2})
    yield app
    app.extensions["recs"].store.close()


@pytest.fixture
def client(app, dsn):
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = make_key(dsn)
    return c


def items_of(body: dict) -> list:
    return [r["item_id"] for r in body["recommendations"]]


def test_a_user_and_items_by_their_external_ids(client):
    body = client.get("/api/v1/recommendations/user_7?limit=4").get_json()
    assert body["user_id"] == "user_7" and body["source"] == "precomputed"
    assert items_of(body) == ["item_10", "item_11", 12, 13]
    body = client.get("/api/v1/recommendations/user_7?limit=3&exclude=item_10,12").get_json()
    assert items_of(body) == ["item_11", 13, 14]
    body = client.get("/api/v1/similar/item_20?limit=3").get_json()
    assert body["item_id"] == "item_20"
    assert items_of(body) == ["item_21", 22, 23]
    assert [r["reason_item_id"] for r in body["recommendations"]] == ["item_20"] * 3
    body = client.get("/api/v1/recommendations/user_7?type=similar&item_id=item_20&limit=2"
                      ).get_json()
    assert items_of(body) == ["item_21", 22]
    body = client.get("/api/v1/trending?limit=5").get_json()
    assert items_of(body) == [16, 17, 18, "item_10", "item_11"]


def test_unknown_external_ids(client):
    r = client.get("/api/v1/similar/item_nope")
    assert r.status_code == 404 and r.get_json()["error"]["field"] == "item_id"
    body = client.get("/api/v1/recommendations/user_nope?limit=3").get_json()
    assert body["user_id"] == "user_nope" and body["source"] == "popular"
    assert body["fallback"] is True and len(body["recommendations"]) == 3


@pytest.mark.parametrize("path, field", [
    ("/api/v1/recommendations/a%20b", "user_id"),
    ("/api/v1/recommendations/000", "user_id"),
    ("/api/v1/recommendations/user_7?exclude=item_1,,2", "exclude"),
    ("/api/v1/similar/" + "x" * 257, "item_id"),
])
def test_bad_ids_are_a_400_naming_the_field(client, path, field):
    r = client.get(path)
    assert r.status_code == 400 and r.get_json()["error"]["field"] == field


def test_posted_events_map_new_ids_and_shape_the_next_answer(client, dsn):
    r = client.post("/api/v1/events", json={"events": [
        event("user_new", "item_20"), event("user_new", "brand_new_item", event_id="e-1")]})
    assert r.status_code == 201 and r.get_json() == {"stored": 2, "duplicates": 0}
    mapped = dict(sql(dsn, "SELECT external_id, internal_id FROM external_ids "
                           "WHERE external_id IN ('user_new', 'brand_new_item')"))
    assert set(mapped) == {"user_new", "brand_new_item"} and min(mapped.values()) > B + 7
    assert sorted(sql(dsn, "SELECT user_id, item_id FROM interactions")) == sorted([
        (mapped["user_new"], B + 20), (mapped["user_new"], mapped["brand_new_item"])])
    # The same event again is a duplicate: the id maps to the same internal id.
    r = client.post("/api/v1/events", json=event("user_new", "brand_new_item", event_id="e-1"))
    assert r.get_json() == {"stored": 0, "duplicates": 1}
    # The new user's answer: "Because you watched" item_20, by the client's ids.
    body = client.get("/api/v1/recommendations/user_new?limit=2").get_json()
    assert body["user_id"] == "user_new"
    r = client.post("/api/v1/events", json=event("user_7", "item_20"))
    body = client.get("/api/v1/recommendations/user_7?limit=4").get_json()
    assert items_of(body)[0] == "item_21"
    assert body["recommendations"][0]["reason_item_id"] == "item_20"
    assert "item_20" not in items_of(body)
