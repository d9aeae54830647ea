"""Catalog and user APIs (issue 14): PUT items, one or a batch; PUT a user's onboarding
preferences; the catalog scope; an unavailable item leaving every answer of a real
gunicorn reader within RECS_BLOCKS_REFRESH_S; new and changed items reaching the hourly
run's selection. Against the suite's real Postgres, the reader as recs_reader.
"""

from __future__ import annotations

import datetime as dt
import time

import psycopg2
import pytest

from core.settings import READER_ROLE
from jobs import hourly
from jobs import rules as rules_mod
from serve.app import create_app
from tests.conftest import role_url
from tests.test_serve import Gunicorn, event, ids, make_key, publish_fixture


def sql(dsn: str, query: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def app(settings, dsn):
    publish_fixture(dsn)
    reader = settings.replace(reader_database_url=role_url(dsn, READER_ROLE))
    app = create_app({"SETTINGS": reader, "TESTING": True, "STORE_BACKOFF_S": 0.2})
    yield app
    app.extensions["recs"].store.close()


@pytest.fixture
def client(app, dsn):
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("catalog",))
    return c


def item_row(dsn: str, item_id: int) -> tuple:
    return sql(dsn, "SELECT title, category, tags, description, attributes, available, "
                    "updated_at FROM items WHERE item_id = %s", (item_id,))[0]


def test_put_one_item_new_changed_unchanged_and_partial(client, dsn):
    r = client.put("/api/v1/items/sku-1", json={
        "title": "Red shoes", "category": "Shoes", "tags": ["red", "red", "leather"],
        "description": "Shiny", "attributes": {"price": 10}})
    assert r.status_code == 200 and r.get_json() == {"created": 1, "updated": 0,
                                                     "unchanged": 0}
    (iid,), = sql(dsn, "SELECT internal_id FROM external_ids WHERE external_id = 'sku-1'")
    first = item_row(dsn, iid)
    assert first[:6] == ("Red shoes", "Shoes", ["red", "leather"], "Shiny", {"price": 10},
                         True)
    # The same again: nothing changes, not even updated_at.
    assert client.put("/api/v1/items/sku-1", json={"title": "Red shoes"}).get_json() == \
        {"created": 0, "updated": 0, "unchanged": 1}
    assert item_row(dsn, iid) == first
    # Withdrawn: the text did not change, so the hourly run has nothing to embed again.
    assert client.put("/api/v1/items/sku-1", json={"available": False}).get_json()[
        "updated"] == 1
    after = item_row(dsn, iid)
    assert after[5] is False and after[6] == first[6] and after[:5] == first[:5]
    # A text change stamps updated_at; a field given as null is cleared.
    client.put("/api/v1/items/sku-1", json={"title": "Red shoes II", "description": None})
    changed = item_row(dsn, iid)
    assert changed[0] == "Red shoes II" and changed[3] is None and changed[6] > first[6]


def test_a_loaded_item_and_a_put_one_share_the_clients_id(client, dsn, tmp_path):
    from jobs.ingest import generic

    (tmp_path / "items.csv").write_text("item_id,title\nsku-7,Loaded title\n")
    generic.load("items", tmp_path / "items.csv", dsn=dsn)
    assert client.put("/api/v1/items/sku-7", json={"title": "Put title"}).get_json() == \
        {"created": 0, "updated": 1, "unchanged": 0}
    assert sql(dsn, "SELECT i.title FROM items i JOIN external_ids x ON x.internal_id = "
                    "i.item_id AND x.entity_type = 'item' WHERE x.external_id = 'sku-7'") == \
        [("Put title",)]


def test_put_batch_is_all_or_nothing_and_names_the_field(client, dsn):
    r = client.put("/api/v1/items", json={"items": [
        {"item_id": "b-1", "title": "One"}, {"item_id": 10, "title": "Movie 10 (new cut)"},
        {"item_id": "b-2", "category": "Hats"}]})
    assert r.status_code == 400
    assert r.get_json()["error"] == {"code": "missing", "field": "items[2].title",
                                     "message": "items[2].title is required for a new item"}
    assert sql(dsn, "SELECT title FROM items WHERE item_id = 10") == [("Movie 10",)]
    r = client.put("/api/v1/items", json={"items": [
        {"item_id": "b-1", "title": "One"}, {"item_id": 10, "title": "Movie 10 (new cut)"},
        {"item_id": 11, "title": "Movie 11"}]})
    assert r.get_json() == {"created": 1, "updated": 1, "unchanged": 1}
    assert sql(dsn, "SELECT title FROM items WHERE item_id = 10") == [("Movie 10 (new cut)",)]


@pytest.mark.parametrize("body, field", [
    ({"title": " "}, "title"),
    ({"title": "x", "tags": "a,b"}, "tags"),
    ({"title": "x", "tags": ["ok", 3]}, "tags[1]"),
    ({"title": "x", "category": "c" * 51}, "category"),
    ({"title": "x", "attributes": [1]}, "attributes"),
    ({"title": "x", "available": "no"}, "available"),
    ({"title": "x", "price": 3}, "price"),
    ({"title": "x", "item_id": "other"}, "item_id"),
])
def test_bad_item_fields_are_400s_naming_them(client, body, field):
    r = client.put("/api/v1/items/sku-9", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["field"] == field


def test_scopes_catalog_and_admin_only(app, dsn):
    c = app.test_client()
    body = {"title": "Lamp"}
    for scopes, status in ((("read",), 403), (("events",), 403), (("catalog",), 200),
                           (("admin",), 200)):
        r = c.put("/api/v1/items/lamp", json=body,
                  headers={"X-API-Key": make_key(dsn, scopes)})
        assert r.status_code == status, scopes
    assert c.put("/api/v1/items/lamp", json=body).status_code == 401
    catalog = make_key(dsn, ("catalog",))
    assert c.post("/api/v1/events", json=event(7, 20),
                  headers={"X-API-Key": catalog}).status_code == 403


def test_unavailable_items_are_blocked_in_the_jobs_too(client, dsn):
    client.put("/api/v1/items/10", json={"available": False})
    conn = psycopg2.connect(dsn)
    try:
        assert 10 in rules_mod.blocked_items(conn)
    finally:
        conn.close()


def test_new_and_changed_items_are_what_the_next_hourly_run_embeds(client, dsn):
    (mark,), = sql(dsn, "SELECT max(updated_at) FROM items")[0:1]
    client.put("/api/v1/items", json={"items": [{"item_id": "new-1", "title": "Fresh"},
                                                {"item_id": 12, "title": "Movie 12 v2"},
                                                {"item_id": 13, "available": False}]})
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            picked = hourly._changed_items(cur, mark, dt.datetime.now(dt.UTC))
    finally:
        conn.close()
    (new_id,), = sql(dsn, "SELECT internal_id FROM external_ids WHERE external_id = 'new-1'")
    assert sorted(picked["item_id"]) == sorted([new_id, 12])


def test_onboarding_preferences_shape_a_new_users_first_answer(client, dsn):
    r = client.put("/api/v1/users/user_new", json={
        "preferences": {"categories": ["drama"], "items": [20, "sku-unknown"]}})
    assert r.status_code == 200
    assert r.get_json() == {"user_id": "user_new", "preferences": {
        "categories": ["drama"], "items": [20, "sku-unknown"]}}
    (uid,), = sql(dsn, "SELECT internal_id FROM external_ids WHERE external_id = 'user_new'")
    (sku,), = sql(dsn, "SELECT internal_id FROM external_ids WHERE external_id = 'sku-unknown'")
    assert sql(dsn, "SELECT preferences FROM users WHERE user_id = %s", (uid,)) == [
        ({"categories": ["drama"], "items": [20, sku]},)]
    body = client.get("/api/v1/recommendations/user_new?limit=6").get_json()
    assert body["source"] == "preferences" and body["fallback"] is True
    # Similar to 20 (21, 22, 23, 10) and trending in drama (16, 18), in turn.
    assert ids(body)[:5] == [21, 16, 22, 18, 23]
    reasons = [r["reason"] for r in body["recommendations"]]
    assert reasons[:2] == ["Because you liked Movie 20", "Trending in drama"]
    assert body["recommendations"][0]["reason_item_id"] == 20
    assert 20 not in ids(body)  # a liked item is not offered back
    # Without preferences: popular, as before.
    assert client.get("/api/v1/recommendations/user_other").get_json()["source"] == "popular"
    r = client.put("/api/v1/users/u1", json={"preferences": {"categories": "drama"}})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "preferences.categories"


@pytest.mark.integration
def test_an_unavailable_item_leaves_every_answer_of_a_real_reader_within_5_s(dsn, tmp_path):
    """gunicorn, two workers, RECS_BLOCKS_REFRESH_S at its default (2 s): the issue's bar
    is 5 s."""
    publish_fixture(dsn)
    key = make_key(dsn, ("admin",))
    server = Gunicorn(dsn, tmp_path / "home", api_key=key)
    paths = ["/api/v1/recommendations/7?limit=10", "/api/v1/recommendations/8?limit=10",
             "/api/v1/recommendations/7?type=trending&limit=10",
             "/api/v1/recommendations/999?limit=10", "/api/v1/similar/20?limit=10",
             "/api/v1/trending?limit=10"]
    try:
        def showing() -> list[str]:
            return [p for p in paths for _ in range(2)  # both workers, likely
                    if 10 in ids(server.get(p).json())]
        assert len(showing()) >= 8  # item 10 is in (nearly) every list
        r = requests_put(server, "/api/v1/items/10", {"available": False}, key)
        t0 = time.monotonic()
        assert r.status_code == 200
        while showing():
            assert time.monotonic() - t0 < 10, "item 10 still served after 10 s"
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        # Then it stays out, on every request.
        for _ in range(3):
            assert not showing()
        print(f"\nunavailable item gone from every answer after {elapsed:.2f} s")
        assert elapsed <= 5.0  # the bar (the refresh period, 2 s, and a request)
        requests_put(server, "/api/v1/items/10", {"available": True}, key)
        t0 = time.monotonic()
        while not showing():
            assert time.monotonic() - t0 < 10, "item 10 did not come back"
            time.sleep(0.05)
    finally:
        server.stop()


def requests_put(server: Gunicorn, path: str, body: dict, key: str):
    import requests

    return requests.put(server.url + path, json=body, headers={"X-API-Key": key}, timeout=5)
