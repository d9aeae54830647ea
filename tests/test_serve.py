"""The reader against a real Postgres: lists, real-time exclusion, blending, fallbacks,
validation, JSON errors, idempotent events, and one run under real gunicorn.

A fixture version is published by SQL the way jobs/publish.py does it: a model_runs row,
one partition per list table for the version, the lists, and the serving_state switch,
all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import requests

from core.constants import POPULAR_REASON
from core.settings import PROJECT_ROOT, Settings
from serve import apikeys
from serve.app import create_app
from serve.fallback import snapshot_path
from serve.validation import stable_event_id

VERSION = "v20240101-test"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DATA_UNTIL = NOW - dt.timedelta(hours=1)

TITLES = {i: f"Movie {i}" for i in range(1, 41)}
# user -> (items, history_tail); reasons name the first history item.
USER_LISTS = {
    7: ([10, 11, 12, 13, 14, 15, 16], [1, 2, 3]),
    8: ([10, 11], [4]),
    9: ([30, 31, 32], [5]),
}
SIMILAR = {
    20: [21, 22, 23, 10],
    5: [6, 7, 8],
    11: [24, 25, 26],
}
LISTS = {
    "popular": [1, 2, 3, 4, 5, 6, 16, 17, 18, 19],
    "trending": [16, 17, 18, 10, 11],
    "trending:category:drama": [16, 18],
}


def _scores(n: int) -> list[float]:
    return [round(1.0 - 0.05 * i, 2) for i in range(n)]


def publish_fixture(dsn: str, version: str = VERSION, data_until: dt.datetime = DATA_UNTIL,
                    lists: dict[str, list[int]] | None = None) -> None:
    """Publish the fixture version as jobs/publish.py does, in one transaction."""
    lists = LISTS if lists is None else lists
    suffix = re.sub(r"[^a-z0-9]+", "_", version.lower())
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO items (item_id, title, category) VALUES "
                        + ",".join(["(%s, %s, %s)"] * len(TITLES))
                        + " ON CONFLICT DO NOTHING",
                        [v for i, t in TITLES.items()
                         for v in (i, t, "drama" if i % 2 == 0 else "comedy")])
            cur.execute("INSERT INTO model_runs (model_version, status, data_until, "
                        "finished_at, published_at) VALUES (%s, 'published', %s, now(), now())",
                        (version, data_until))
            for table, key in (("recommendations", "user_id"), ("similar_items", "item_id"),
                               ("trending", "list_name")):
                part = f"{table}_{suffix}"
                cur.execute(f"CREATE TABLE {part} PARTITION OF {table} FOR VALUES IN (%s)",
                            (version,))
                cur.execute(f"CREATE UNIQUE INDEX ON {part} ({key})")
            for user, (items, tail) in USER_LISTS.items():
                cur.execute(
                    "INSERT INTO recommendations (model_version, user_id, items, scores, "
                    "reasons, reason_item_ids, history_tail, computed_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (version, user, items, _scores(len(items)),
                     [f"Because you watched {TITLES[tail[0]]}"] * len(items),
                     [tail[0]] * len(items), tail, data_until))
            for item, items in SIMILAR.items():
                cur.execute(
                    "INSERT INTO similar_items (model_version, item_id, items, scores, "
                    "reasons, computed_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (version, item, items, _scores(len(items)),
                     [f"Similar to {TITLES[item]}"] * len(items), data_until))
            for name, items in lists.items():
                reason = POPULAR_REASON if name == "popular" else "Trending now"
                cur.execute(
                    "INSERT INTO trending (model_version, list_name, items, scores, reasons, "
                    "computed_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (version, name, items, _scores(len(items)), [reason] * len(items),
                     data_until))
            cur.execute("UPDATE serving_state SET previous_version = live_version, "
                        "live_version = %s, switched_at = now()", (version,))
    finally:
        conn.close()


def write_snapshot(lake: str | Path, version: str, items: list[int]) -> Path:
    """The popular snapshot as the publish step writes it."""
    path = snapshot_path(lake)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_version": version, "items": [
        {"item_id": i, "score": s} for i, s in zip(items, _scores(len(items)), strict=True)]}))
    return path


def ids(body: dict) -> list[int]:
    return [r["item_id"] for r in body["recommendations"]]


def event(user: int, item: int, ts: dt.datetime | None = None, **extra) -> dict:
    return {"user_id": user, "item_id": item, "event_type": "click",
            "timestamp": (ts or NOW).isoformat(), **extra}


def make_key(dsn: str, scopes: tuple[str, ...] = ("events",), name: str | None = None
             ) -> str:
    """A new API key stored in ``dsn`` (as `recs keys create` does)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            _, key = apikeys.create(cur, name or f"test-{os.urandom(4).hex()}", scopes)
    finally:
        conn.close()
    return key


# Well-formed, stored nowhere: checking it needs the database.
UNKNOWN_KEY = "recs_000000000000_" + "A" * 43


def count_events(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM interactions")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def app(settings: Settings, dsn: str):
    publish_fixture(dsn)
    app = create_app({"SETTINGS": settings, "TESTING": True, "STORE_BACKOFF_S": 0.2})
    yield app
    app.extensions["recs"].store.close()


@pytest.fixture
def client(app, dsn):
    """A test client that sends an events key with every request."""
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = make_key(dsn)
    return c


# --- personalized ----------------------------------------------------------------------

def test_personalized_list_order_and_reasons(client):
    r = client.get("/api/v1/recommendations/7?limit=5")
    assert r.status_code == 200
    body = r.get_json()
    assert ids(body) == [10, 11, 12, 13, 14]
    assert body["fallback"] is False
    assert body["source"] == "precomputed"
    assert body["model_version"] == VERSION
    assert body["user_id"] == 7
    assert body["experiment_id"] is None
    first = body["recommendations"][0]
    assert first == {"item_id": 10, "score": 1.0, "reason": "Because you watched Movie 1",
                     "reason_item_id": 1, "model_version": VERSION}
    # The default limit (20) is more than the list holds: popular items follow it.
    default = client.get("/api/v1/recommendations/7").get_json()
    assert ids(default) == USER_LISTS[7][0] + [1, 2, 3, 4, 5, 6, 17, 18, 19]
    assert {r["reason"] for r in default["recommendations"][7:]} == {POPULAR_REASON}


def test_event_after_data_until_is_excluded_and_blended(client):
    r = client.post("/api/v1/events", json=event(7, 20))
    assert r.status_code == 201
    assert r.get_json() == {"stored": 1, "duplicates": 0}
    body = client.get("/api/v1/recommendations/7?limit=6").get_json()
    assert body["source"] == "precomputed"
    assert 20 not in ids(body)
    # Items similar to 20 take positions 1 and 3; the precomputed list fills the rest.
    assert ids(body) == [21, 10, 22, 11, 12, 13]
    assert body["recommendations"][0]["reason"] == "Because you watched Movie 20"
    assert body["recommendations"][0]["reason_item_id"] == 20
    assert body["recommendations"][1]["reason"] == "Because you watched Movie 1"

    # A newer event on a listed item: it leaves the list, its similar items lead.
    later = NOW + dt.timedelta(seconds=5)
    assert client.post("/api/v1/events", json=event(7, 11, later)).status_code == 201
    body = client.get("/api/v1/recommendations/7?limit=8").get_json()
    assert ids(body) == [24, 10, 25, 12, 21, 13, 22, 14]
    reasons = [r["reason"] for r in body["recommendations"]]
    assert reasons[0] == reasons[2] == "Because you watched Movie 11"
    assert reasons[4] == reasons[6] == "Because you watched Movie 20"


def test_events_before_data_until_do_not_exclude(client):
    old = DATA_UNTIL - dt.timedelta(hours=2)
    assert client.post("/api/v1/events", json=event(7, 12, old)).status_code == 201
    assert 12 in ids(client.get("/api/v1/recommendations/7?limit=5").get_json())


def test_exclude_parameter(client):
    body = client.get("/api/v1/recommendations/7?limit=3&exclude=10,11&exclude=12").get_json()
    assert ids(body) == [13, 14, 15]
    body = client.get("/api/v1/recommendations/7?limit=3&exclude=[13,14]").get_json()
    assert ids(body) == [10, 11, 12]


def test_long_list_with_many_exclusions_and_recent_items(client, dsn):
    """Only the head of a list is read (limit + exclusions + recent items + blends): the
    answer must be the same as from the whole list."""
    items = list(range(101, 201))
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO recommendations (model_version, user_id, items, scores, "
                    "reasons, reason_item_ids, history_tail, computed_at) "
                    "VALUES (%s, 50, %s, %s, %s, %s, '{1}', %s)",
                    (VERSION, items, _scores(100), ["Because you watched Movie 1"] * 100,
                     [1] * 100, DATA_UNTIL))
    conn.close()
    later = [NOW + dt.timedelta(seconds=i) for i in range(10)]
    r = client.post("/api/v1/events", json={"events": [
        event(50, item, ts) for item, ts in zip(range(101, 111), later, strict=True)]})
    assert r.status_code == 201
    exclude = ",".join(str(i) for i in range(111, 131))
    body = client.get(f"/api/v1/recommendations/50?limit=5&exclude={exclude}").get_json()
    assert ids(body) == [131, 132, 133, 134, 135] and body["fallback"] is False
    body = client.get(f"/api/v1/recommendations/50?limit=100&exclude={exclude}").get_json()
    # The rest of the list, then every popular item (10): fewer than the limit.
    assert ids(body) == list(range(131, 201)) + LISTS["popular"]


def test_top_up_from_popular(client):
    body = client.get("/api/v1/recommendations/8?limit=5").get_json()
    assert ids(body) == [10, 11, 1, 2, 3]
    assert body["fallback"] is False
    assert [r["reason"] for r in body["recommendations"][2:]] == [POPULAR_REASON] * 3
    assert all(r["reason_item_id"] is None for r in body["recommendations"][2:])
    body = client.get("/api/v1/recommendations/8?limit=5&exclude=1,10").get_json()
    assert ids(body) == [11, 2, 3, 4, 5]


def test_unknown_user_gets_popular(client):
    body = client.get("/api/v1/recommendations/999?limit=4").get_json()
    assert ids(body) == [1, 2, 3, 4]
    assert body["fallback"] is True
    assert body["source"] == "popular"
    assert body["model_version"] == VERSION
    assert {r["reason"] for r in body["recommendations"]} == {POPULAR_REASON}
    # Its recent events still exclude.
    assert client.post("/api/v1/events", json=event(999, 2)).status_code == 201
    assert ids(client.get("/api/v1/recommendations/999?limit=4").get_json()) == [1, 3, 4, 5]


def test_no_live_version(settings, dsn):
    app = create_app({"SETTINGS": settings, "TESTING": True})
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("read",))
    body = client.get("/api/v1/recommendations/7").get_json()
    assert body["recommendations"] == [] and body["fallback"] is True
    assert body["source"] == "popular"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "not_ready"
    # Publishing makes the same app serve the new version at once.
    publish_fixture(dsn)
    body = client.get("/api/v1/recommendations/7?limit=2").get_json()
    assert ids(body) == [10, 11] and body["model_version"] == VERSION
    assert client.get("/readyz").get_json() == {"status": "ready", "live_version": VERSION}


def test_version_switch_is_seen_by_next_request(client, dsn):
    assert client.get("/api/v1/recommendations/7?limit=1").get_json()["model_version"] \
        == VERSION
    publish_fixture(dsn, "v2", lists={**LISTS, "popular": [40, 39, 38]})
    body = client.get("/api/v1/recommendations/999?limit=2").get_json()
    assert body["model_version"] == "v2"
    assert ids(body) == [40, 39]  # the popular list was reloaded for the new version


# --- similar and trending --------------------------------------------------------------

def test_similar_type(client):
    body = client.get("/api/v1/recommendations/7?type=similar&item_id=20&limit=4").get_json()
    assert ids(body) == [21, 22, 23, 10]
    assert body["source"] == "similar" and body["fallback"] is False
    assert body["recommendations"][0]["reason_item_id"] == 20
    assert body["recommendations"][0]["reason"] == "Similar to Movie 20"
    # No item: the newest item of the user's history tail anchors the list.
    body = client.get("/api/v1/recommendations/9?type=similar&limit=3").get_json()
    assert ids(body) == [6, 7, 8]
    # A recent event anchors it instead, and is excluded.
    assert client.post("/api/v1/events", json=event(9, 20)).status_code == 201
    body = client.get("/api/v1/recommendations/9?type=similar&limit=3").get_json()
    assert ids(body) == [21, 22, 23]
    # An item without a list: popular.
    body = client.get("/api/v1/recommendations/9?type=similar&item_id=33&limit=2").get_json()
    assert body["source"] == "popular" and body["fallback"] is True
    body = client.get("/api/v1/recommendations/9?type=similar&context=product_page"
                      "&item_id=5&limit=5").get_json()
    assert ids(body) == [6, 7, 8, 1, 2]


def test_trending_type_applies_exclusions(client):
    assert client.post("/api/v1/events", json=event(7, 17)).status_code == 201
    body = client.get("/api/v1/recommendations/7?type=trending&limit=4&exclude=16").get_json()
    assert ids(body) == [18, 10, 11, 1]
    assert body["source"] == "trending"


def test_similar_endpoint(client):
    body = client.get("/api/v1/similar/20?limit=2").get_json()
    assert ids(body) == [21, 22]
    assert body["source"] == "similar" and body["item_id"] == 20
    body = client.get("/api/v1/similar/5?limit=5").get_json()
    assert ids(body) == [6, 7, 8, 1, 2]
    # Known item without a list: popular, never the item itself.
    body = client.get("/api/v1/similar/1?limit=3").get_json()
    assert body["fallback"] is True and ids(body) == [2, 3, 4]
    r = client.get("/api/v1/similar/9999")
    assert r.status_code == 404
    assert r.get_json()["error"]["field"] == "item_id"


def test_trending_endpoint(client):
    body = client.get("/api/v1/trending").get_json()
    assert ids(body) == [16, 17, 18, 10, 11, 1, 2, 3, 4, 5, 6, 19]
    assert body["source"] == "trending"
    body = client.get("/api/v1/trending?category=drama&limit=2").get_json()
    assert ids(body) == [16, 18]
    body = client.get("/api/v1/trending?category=nope&limit=2").get_json()
    assert body["source"] == "popular" and body["fallback"] is True


# --- errors ----------------------------------------------------------------------------

BAD_PARAMETERS = [
    # Any id without whitespace, control character or slash is a client's id (core/ids.py,
    # issue 14: "abc", "-3", "999...9" are external ids now); these are not ids at all.
    ("/api/v1/recommendations/a%20b", "user_id"),
    ("/api/v1/recommendations/0", "user_id"),
    ("/api/v1/recommendations/0000", "user_id"),
    ("/api/v1/recommendations/7?limit=0", "limit"),
    ("/api/v1/recommendations/7?limit=101", "limit"),
    ("/api/v1/recommendations/7?limit=x", "limit"),
    ("/api/v1/recommendations/7?type=best", "type"),
    ("/api/v1/recommendations/7?context=cart", "context"),
    ("/api/v1/recommendations/7?context=product_page", "item_id"),
    ("/api/v1/recommendations/7?item_id=a%09b", "item_id"),
    ("/api/v1/recommendations/7?exclude=1,,x", "exclude"),
    ("/api/v1/recommendations/7?exclude=" + ",".join(str(i) for i in range(1, 502)),
     "exclude"),
    ("/api/v1/similar/0", "item_id"),
    ("/api/v1/similar/5?limit=1000", "limit"),
    ("/api/v1/trending?limit=-1", "limit"),
    ("/api/v1/trending?category=" + "c" * 51, "category"),
]


def test_bad_parameters(client):
    for url, field in BAD_PARAMETERS:
        r = client.get(url)
        assert r.status_code == 400, url
        assert r.is_json and r.get_json()["error"]["field"] == field, url


FUTURE = (NOW + dt.timedelta(days=2)).isoformat()


BAD_EVENTS = [
    ({"item_id": 1, "event_type": "click", "timestamp": NOW.isoformat()}, "user_id"),
    (event(0, 1), "user_id"),
    (event("user 7", 1), "user_id"),
    (event(2**63, 1), "user_id"),
    (event(True, 1), "user_id"),
    (event(7, 1.5), "item_id"),
    ({**event(7, 1), "event_type": "like"}, "event_type"),
    ({**event(7, 1), "timestamp": "yesterday"}, "timestamp"),
    ({**event(7, 1), "timestamp": 1700000000}, "timestamp"),
    (event(7, 1, rating=11), "rating"),
    (event(7, 1, rating="5"), "rating"),
    (event(7, 1, context=["a"]), "context"),
    (event(7, 1, context={"x": "y" * 5000}), "context"),
    (event(7, 1, event_id="e" * 65), "event_id"),
    (event(7, 1, event_id={"a": 1}), "event_id"),
    ({"events": []}, "events"),
    ({"events": {}}, "events"),
    ({"events": [event(7, 1)] * 1001}, "events"),
    ({"events": [event(7, 1), {**event(7, 2), "timestamp": "nope"}]}, "events[1].timestamp"),
    ({"events": [event(7, 1), "x"]}, "events[1]"),
    ([event(7, 1)], None),
]


def test_bad_events(client, dsn):
    for body, field in BAD_EVENTS:
        r = client.post("/api/v1/events", json=body)
        assert r.status_code == 400, (body, r.get_json())
        assert r.get_json()["error"]["field"] == field, body
    # Well formed but outside the accepted time window: 422 (tests/test_abuse.py).
    r = client.post("/api/v1/events", json={**event(7, 1), "timestamp": FUTURE})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "timestamp"
    assert count_events(dsn) == 0


def test_event_values_accepted(client, dsn):
    naive = NOW.replace(tzinfo=None).isoformat()
    r = client.post("/api/v1/events", json={
        "user_id": "42", "item_id": "7", "event_type": "rating", "rating": 4.5,
        "timestamp": naive, "context": {"source": "homepage_carousel"}})
    assert r.status_code == 201
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute('SELECT user_id, item_id, rating, "timestamp", context FROM interactions')
        row = cur.fetchone()
    conn.close()
    assert row == (42, 7, 4.5, NOW, {"source": "homepage_carousel"})


def test_http_errors_are_json(client):
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.post("/api/v1/recommendations/7")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]
    r = client.get("/api/v1/events")
    assert r.status_code == 405 and r.is_json
    r = client.post("/api/v1/events", data=b"x" * (2 * 1024 * 1024),
                    content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "payload_too_large"
    r = client.post("/api/v1/events", data="user_id=1", content_type="text/plain")
    assert r.status_code == 415 and r.get_json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/api/v1/events", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_json"
    assert client.get("/healthz").get_json()["status"] == "ok"
    assert client.get("/readyz").get_json() == {"status": "ready", "live_version": VERSION}


# --- events ----------------------------------------------------------------------------

def test_batch_retried_with_event_ids_is_stored_once(client, dsn):
    batch = {"events": [event(7, i, event_id=f"evt-{i}") for i in (20, 21)]
             + [event(8, 22, event_id=12345)]}
    r = client.post("/api/v1/events", json=batch)
    assert r.status_code == 201 and r.get_json() == {"stored": 3, "duplicates": 0}
    r = client.post("/api/v1/events", json=batch)
    assert r.status_code == 201 and r.get_json() == {"stored": 0, "duplicates": 3}
    assert count_events(dsn) == 3
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT event_id FROM interactions WHERE item_id = 22")
        assert cur.fetchone()[0] == stable_event_id("12345")
    conn.close()
    # Without ids, every post is a new event.
    for _ in range(2):
        assert client.post("/api/v1/events", json=event(7, 30)).get_json()["stored"] == 1
    assert count_events(dsn) == 5


def test_batch_with_one_bad_event_stores_nothing(client, dsn):
    events = [event(7, 20), event(7, 21), {**event(7, 22), "event_type": "hover"}]
    r = client.post("/api/v1/events", json={"events": events})
    assert r.status_code == 400
    assert r.get_json()["error"]["field"] == "events[2].event_type"
    assert count_events(dsn) == 0


def test_events_on_days_without_partition(client, dsn):
    """No partition for these days (a fresh database has none): the events are stored in
    the DEFAULT partition and the request creates no table."""
    days = [NOW - dt.timedelta(days=2), NOW]
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_class")
        relations = cur.fetchone()[0]
    r = client.post("/api/v1/events", json={"events": [event(7, 1, d) for d in days]})
    assert r.status_code == 201 and r.get_json()["stored"] == 2
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM interactions_default")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT count(*) FROM pg_class")
        assert cur.fetchone()[0] == relations
    conn.close()


# --- slow database ---------------------------------------------------------------------

def test_statement_timeout_answers_from_memory(client, dsn):
    assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
        == "precomputed"
    blocker = psycopg2.connect(dsn)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE serving_state IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        body = client.get("/api/v1/recommendations/7?limit=3&exclude=1").get_json()
        assert time.monotonic() - t0 < 2.0
        assert body["fallback"] is True and body["source"] == "memory"
        assert ids(body) == [2, 3, 4]
        # Writes have their own breaker: reads timing out do not refuse an event.
        r = client.post("/api/v1/events", json=event(7, 1))
        assert r.status_code == 201
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.get_json()["error"]["message"] == "database unavailable (statement_timeout)"
    finally:
        blocker.rollback()
        blocker.close()
    time.sleep(0.3)  # the breaker's back-off in this app
    assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
        == "precomputed"


# --- real gunicorn ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKERS = 2  # as in serve/gunicorn.conf.py


class Gunicorn:
    """A gunicorn reader in a subprocess, stopped by :meth:`stop`."""

    def __init__(self, database_url: str, home: Path, api_key: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"gunicorn-{self.port}.log"
        env = {**os.environ, "RECS_DATABASE_URL": database_url, "RECS_HOME": str(home),
               "RECS_LAKE_ROOT": "", "RECS_SERVE_BIND": f"127.0.0.1:{self.port}",
               **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "serve/gunicorn.conf.py",
                 "serve.app:create_app()"],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def _wait_ready(self) -> None:
        """Return when every worker has answered (each reports its pid)."""
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            try:
                r = requests.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
                    if len(pids) >= WORKERS:
                        return
            except requests.RequestException:  # not listening, or no worker yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def get(self, path: str) -> requests.Response:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        return requests.get(self.url + path, timeout=5, headers=headers)

    def post(self, path: str, body: object, key: str | None = None) -> requests.Response:
        key = key or self.api_key
        headers = {"X-API-Key": key} if key else {}
        return requests.post(self.url + path, json=body, timeout=5, headers=headers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.integration
def test_gunicorn_serves_over_http(dsn, tmp_path):
    publish_fixture(dsn)
    server = Gunicorn(dsn, tmp_path / "home", api_key=make_key(dsn))
    try:
        r = server.get("/api/v1/recommendations/7?limit=3")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        assert ids(r.json()) == [10, 11, 12]
        r = server.post("/api/v1/events", event(7, 20, event_id="http-1"))
        assert r.status_code == 201 and r.json() == {"stored": 1, "duplicates": 0}
        # Both workers see the event at once (it is in the database, not in a worker).
        for _ in range(4):
            assert ids(server.get("/api/v1/recommendations/7?limit=3").json()) \
                == [21, 10, 22]
        r = server.get("/api/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert server.get("/readyz").json()["live_version"] == VERSION
    finally:
        server.stop()
