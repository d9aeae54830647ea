"""Abuse of the reader's request side, against the real app and a real Postgres.

Each test below reproduced a failure of the code before issue 11 (named in its docstring):
events far in the past made the request create partitions, hostile JSON gave 500s, any
request method became a metrics label, an empty ``RECS_EVENTS_KEY_REQUIRED`` switched
event keys off, and one key could take a worker's whole capacity.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
import time

import psycopg2
import pytest

from serve import auth
from serve.app import create_app
from tests.test_serve import count_events, event, make_key, publish_fixture

URL = "/api/v1/events"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _scalar(dsn: str, sql: str, args: tuple = ()):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()[0]
    finally:
        conn.close()


def _partitions(dsn: str) -> int:
    return _scalar(dsn, "SELECT count(*) FROM pg_inherits "
                        "WHERE inhparent = 'interactions'::regclass")


def _app(settings, **config):
    return create_app({"SETTINGS": settings, "TESTING": True, "KEY_CACHE_S": 0, **config})


@pytest.fixture
def keyed(settings, dsn):
    """(test client sending an events key, the key)."""
    publish_fixture(dsn)
    app = _app(settings)
    client = app.test_client()
    key = make_key(dsn)
    client.environ_base["HTTP_X_API_KEY"] = key
    yield client, key
    app.extensions["recs"].store.close()


def _series(client, name: str) -> list[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return [line for line in text.splitlines() if line.startswith(name + "{")]


# --- the event time window -------------------------------------------------------------

def test_events_outside_the_window_are_refused_and_create_no_partition(keyed, dsn):
    """Before: 200 events dated 1971-01-01 plus 8 days each were stored (201) and the
    request created a partition a day for 1,600 days (a partition count of hundreds)."""
    client, _ = keyed
    before = _partitions(dsn)
    start = dt.datetime(1971, 1, 1, tzinfo=dt.UTC)
    batch = [event(7, 1 + i % 30, start + dt.timedelta(days=8 * i)) for i in range(200)]
    r = client.post(URL, json={"events": batch})
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["field"] == "events[0].timestamp" and error["code"] == "outside_window"
    assert "30 days" in error["message"]
    assert _partitions(dsn) == before and count_events(dsn) == 0

    now = _now()
    # One event outside an otherwise good batch: the whole batch is refused.
    r = client.post(URL, json={"events": [event(7, 1, now),
                                          event(7, 2, now - dt.timedelta(days=31))]})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "events[1].timestamp"
    r = client.post(URL, json=event(7, 1, now + dt.timedelta(days=2)))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "timestamp"
    assert "1 day" in r.get_json()["error"]["message"]
    assert count_events(dsn) == 0 and _partitions(dsn) == before

    # Inside the window, near both ends: stored.
    r = client.post(URL, json={"events": [event(7, 1, now - dt.timedelta(days=29)),
                                          event(7, 2, now + dt.timedelta(hours=23))]})
    assert r.status_code == 201 and r.get_json()["stored"] == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'recs_events_total{outcome="rejected"} 3' in metrics


def test_the_window_follows_the_settings(settings, dsn):
    publish_fixture(dsn)
    narrow = _app(settings.replace(event_max_age_days=2, event_max_ahead_days=0)).test_client()
    narrow.environ_base["HTTP_X_API_KEY"] = make_key(dsn)
    now = _now()
    r = narrow.post(URL, json=event(7, 1, now - dt.timedelta(days=3)))
    assert r.status_code == 422 and "2 days" in r.get_json()["error"]["message"]
    r = narrow.post(URL, json=event(7, 1, now + dt.timedelta(hours=1)))
    assert r.status_code == 422
    assert narrow.post(URL, json=event(7, 1, now - dt.timedelta(days=1))).status_code == 201


# --- who wrote an event ----------------------------------------------------------------

def test_each_stored_event_records_its_key(settings, dsn):
    """Before: interactions had no key column; the row carried no key."""
    publish_fixture(dsn)
    client = _app(settings).test_client()
    first, second = make_key(dsn, name="first"), make_key(dsn, name="second")
    for key, item in ((first, 1), (second, 2), (first, 3)):
        r = client.post(URL, json=event(7, item), headers={"X-API-Key": key})
        assert r.status_code == 201
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT i.item_id, k.name FROM interactions i "
                    "JOIN api_keys k ON k.id = i.key_id ORDER BY i.item_id")
        assert cur.fetchall() == [(1, "first"), (2, "second"), (3, "first")]
    conn.close()
    # Keys switched off: no key, no key id.
    open_client = _app(settings, EVENTS_KEY_REQUIRED=False).test_client()
    assert open_client.post(URL, json=event(7, 4)).status_code == 201
    assert _scalar(dsn, "SELECT key_id FROM interactions WHERE item_id = 4") is None


# --- an empty flag is the default ------------------------------------------------------

@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_events_key_flag_means_the_default(settings, dsn, monkeypatch, value):
    """Before: ``RECS_EVENTS_KEY_REQUIRED=`` (empty) switched event keys off: a POST
    without a key was stored (201)."""
    publish_fixture(dsn)
    monkeypatch.setenv("RECS_EVENTS_KEY_REQUIRED", value)
    client = _app(settings).test_client()
    r = client.post(URL, json=event(7, 20))
    assert r.status_code == 401 and count_events(dsn) == 0
    assert auth.flag(value, "X", True) is True and auth.flag(value, "X", False) is False
    assert auth.flag("off", "X", True) is False and auth.flag(" TRUE ", "X", False) is True
    with pytest.raises(ValueError, match="X="):
        auth.flag("maybe", "X", True)


# --- bounded metrics labels ------------------------------------------------------------

def test_request_methods_do_not_create_metric_series(keyed):
    """Before: each of 1,000 random methods became a new ``method`` label value (1,000+
    series of recs_http_requests_total)."""
    client, _ = keyed
    rng = random.Random(11)
    for _ in range(1000):
        method = "".join(rng.choices(string.ascii_uppercase, k=8))
        r = client.open(rng.choice(["/healthz", "/nope/" + method, URL]), method=method)
        assert r.status_code in (404, 405) and r.is_json
    client.open("/healthz", method="FOOBAR")
    for path in ("/healthz", "/api/v1/recommendations/7", "/x/y/z", "/%ED%A0%80"):
        client.get(path)
        client.head(path)
        client.options(path)
    series = _series(client, "recs_http_requests_total")
    methods = {re.search(r'method="([^"]*)"', s).group(1) for s in series}
    endpoints = {re.search(r'endpoint="([^"]*)"', s).group(1) for s in series}
    assert methods <= {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other"}
    assert "other" in methods
    assert "unmatched" in endpoints and all(e == "unmatched" or e.startswith("/")
                                            for e in endpoints)
    assert not any("/x/y/z" in e or "/nope" in e for e in endpoints)
    assert len(series) < 40, series
    assert len(_series(client, "recs_http_request_duration_seconds_count")) < 15


# --- hostile JSON ----------------------------------------------------------------------

def _body(now: str, **fields: str) -> str:
    """An event as JSON text, with raw JSON text for the given fields."""
    base = {"user_id": "7", "item_id": "1", "event_type": '"click"',
            "timestamp": f'"{now}"'}
    base.update(fields)
    return "{" + ",".join(f'"{k}":{v}' for k, v in base.items()) + "}"


def _hostile(now: str) -> list[tuple[str, int, str | None]]:
    deep_list = "[" * 900 + "]" * 900  # parsed, then deeper than the encoder's limit
    deep_object = '{"a":' * 40 + "1" + "}" * 40
    return [
        # Lone surrogates, anywhere a string is accepted.
        (_body(now, context='{"page":"\\ud800"}'), 400, "context"),
        (_body(now, context='{"\\udfff":"x"}'), 400, "context"),
        (_body(now, context='{"a":["ok","\\ud83d"]}'), 400, "context"),
        (_body(now, event_id='"\\ud800"'), 400, "event_id"),
        (_body(now, event_id='"abc\\udc00"'), 400, "event_id"),
        (_body(now, event_type='"\\ud800"'), 400, "event_type"),
        (_body(now, timestamp='"\\ud800"'), 400, "timestamp"),
        (_body(now, user_id='"\\ud800"'), 400, "user_id"),
        ('{"events":[' + _body(now) + "," + _body(now, event_id='"\\ud800"') + "]}",
         400, "events[1].event_id"),
        # NUL characters: JSONB refuses them.
        (_body(now, context='{"a":"x\\u0000y"}'), 400, "context"),
        (_body(now, context='{"\\u0000":1}'), 400, "context"),
        (_body(now, timestamp='"2024\\u0000"'), 400, "timestamp"),
        # Deep nesting: the JSON parser's RecursionError, and a deep context.
        ("[" * 100_000, 400, None),
        ('{"events":' + "[" * 100_000, 400, None),
        ('{"events":[' + "{" * 50_000, 400, None),
        (_body(now, context='{"a":' + deep_list + "}"), 400, "context"),
        (_body(now, context="[" * 3000 + "]" * 3000), 400, None),
        (_body(now, context=deep_object), 400, "context"),
        # Huge numbers, NaN and Infinity.
        (_body(now, user_id="1e400"), 400, "user_id"),
        (_body(now, user_id="9" * 5000), 400, None),
        (_body(now, item_id="9" * 4000), 400, "item_id"),
        (_body(now, rating="1e400"), 400, "rating"),
        (_body(now, rating="NaN"), 400, "rating"),
        (_body(now, rating="-Infinity"), 400, "rating"),
        (_body(now, user_id="Infinity"), 400, "user_id"),
        (_body(now, timestamp="NaN"), 400, "timestamp"),
        (_body(now, context='{"x":NaN}'), 400, "context"),
        (_body(now, context='{"x":1e400}'), 400, "context"),
        (_body(now, event_id="9" * 4000), 400, "event_id"),
        # Not an object.
        ("null", 400, None), ("1", 400, None), ('"x"', 400, None), ("[]", 400, None),
        ("true", 400, None), ("", 400, None), ('{"events":null}', 400, "events"),
        ('{"events":[null]}', 400, "events[0]"),
    ]


def test_hostile_json_gets_a_4xx_naming_the_field(keyed, dsn):
    """Before: a lone surrogate in context or event_id (UnicodeEncodeError), 100,000
    levels of ``[`` (RecursionError in the parser) and a deep context (RecursionError in
    the encoder) were answered 500."""
    client, _ = keyed
    now = _now().isoformat()
    for text, status, field in _hostile(now):
        r = client.post(URL, data=text.encode("utf-8", "surrogatepass"),
                        content_type="application/json")
        assert r.status_code == status and r.is_json, (text[:80], r.status_code,
                                                        r.get_data(as_text=True)[:300])
        assert r.get_json()["error"]["field"] == field, (text[:80], r.get_json())
    # Query strings and paths with the same characters.
    for path in ("/api/v1/recommendations/%ED%A0%80", "/api/v1/recommendations/7?limit=%00",
                 "/api/v1/recommendations/7?exclude=%ED%A0%80",
                 "/api/v1/trending?category=%ED%A0%80", "/api/v1/trending?category=%00",
                 "/api/v1/similar/" + "9" * 5000, "/api/v1/recommendations/7?country=%00%00"):
        r = client.get(path)
        assert r.status_code in (200, 400, 404) and r.is_json, (path, r.status_code)
    assert count_events(dsn) == 0
    assert not [s for s in _series(client, "recs_http_requests_total") if 'status="5' in s]
    # The worker is healthy: a good event is stored.
    assert client.get("/healthz").status_code == 200
    r = client.post(URL, json=event(7, 1, _now(), context={"emoji": "\U0001F600"},
                                    event_id="\U0001F600"))
    assert r.status_code == 201
    assert _scalar(dsn, "SELECT context->>'emoji' FROM interactions") == "\U0001F600"


# --- per-key rate limit ----------------------------------------------------------------

def test_a_key_over_its_rate_gets_429_and_others_do_not(settings, dsn):
    """Before: no limit; every request of one key was served."""
    publish_fixture(dsn)
    client = _app(settings.replace(key_rate_per_s=0.25, key_burst=3),
                  READ_KEYS_REQUIRED=True).test_client()
    hot, calm = make_key(dsn, name="hot"), make_key(dsn, name="calm")
    for item in (1, 2, 3):
        assert client.post(URL, json=event(7, item), headers={"X-API-Key": hot}
                           ).status_code == 201
    r = client.post(URL, json=event(7, 4), headers={"X-API-Key": hot})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    retry = r.headers["Retry-After"]
    assert retry.isdigit() and int(retry) >= 1
    # Reads with the same key are limited too (one bucket per key, every scope).
    assert client.get("/api/v1/trending", headers={"X-API-Key": hot}).status_code == 429
    assert client.post(URL, json=event(7, 5), headers={"X-API-Key": calm}).status_code == 201
    assert count_events(dsn) == 4
    time.sleep(int(retry) + 0.05)
    assert client.post(URL, json=event(7, 6), headers={"X-API-Key": hot}).status_code == 201
    assert sorted(_series(client, "recs_rate_limited_total")) == [
        'recs_rate_limited_total{scope="events"} 1', 'recs_rate_limited_total{scope="read"} 1']


def test_rate_limit_off_and_bounded_memory(settings, dsn):
    publish_fixture(dsn)
    client = _app(settings.replace(key_rate_per_s=0.0, key_burst=1)).test_client()
    key = make_key(dsn)
    for item in range(1, 8):
        assert client.post(URL, json=event(7, item), headers={"X-API-Key": key}
                           ).status_code == 201

    clock = [0.0]
    buckets = auth.TokenBuckets(rate_per_s=1.0, burst=2, max_buckets=100,
                                clock=lambda: clock[0])
    for key_id in range(1000):
        assert buckets.take(key_id) == 0.0
        assert len(buckets) <= 100
    assert buckets.take(999) == 0.0 and buckets.take(999) == pytest.approx(1.0)
    clock[0] += 0.5
    assert buckets.take(999) == pytest.approx(0.5)
    clock[0] += 0.5
    assert buckets.take(999) == 0.0
