"""The reader hardened (issue 11): no DDL on the request path, private reads by default,
block rules in every answer, breakers that one slow user cannot open, a /readyz that
shows no driver text. All against the real Postgres of the suite.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import psycopg2
import pytest

from serve.app import create_app
from serve.store import Breaker, DatabaseUnavailable, Store
from tests.test_serve import (
    DATA_UNTIL,
    LISTS,
    NOW,
    USER_LISTS,
    event,
    free_port,
    ids,
    make_key,
    publish_fixture,
)


def _sql(dsn: str, query: str, params=()) -> list[tuple] | None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _relations(dsn: str) -> tuple[int, int]:
    return _sql(dsn, "SELECT (SELECT count(*) FROM pg_class), "
                     "(SELECT count(*) FROM pg_inherits)")[0]


def _app(settings, dsn, **config):
    app = create_app({"SETTINGS": settings, "TESTING": True, "STORE_BACKOFF_S": 0.5,
                      **config})
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = make_key(dsn)
    return app, client


# --- no DDL on the request path ----------------------------------------------------------

def test_events_of_many_days_create_no_relation(settings, dsn):
    """Was: each unknown day made the store create partitions (recs_ensure_interaction_
    partitions, 8 per day), under the request; 200 days made 1,600 tables."""
    store = Store(dsn, 2000)
    try:
        before = _relations(dsn)
        first = dt.datetime(1971, 1, 1, 12, tzinfo=dt.UTC)
        rows = [(None, 5, 1, "click", None, first + dt.timedelta(days=8 * i), None, None, None)
                for i in range(200)]
        assert store.insert_events(rows) == 200
        assert _relations(dsn) == before
        assert _sql(dsn, "SELECT count(*) FROM interactions_default") == [(200,)]
    finally:
        store.close()


def test_event_posts_create_no_relation_and_record_the_key(settings, dsn):
    publish_fixture(dsn)
    app, client = _app(settings, dsn)
    try:
        before = _relations(dsn)
        batch = {"events": [event(7, 20, NOW - dt.timedelta(hours=h)) for h in range(0, 30, 3)]}
        r = client.post("/api/v1/events", json=batch)
        assert r.status_code == 201 and r.get_json()["stored"] == 10
        assert _relations(dsn) == before
        (key_id,) = _sql(dsn, "SELECT id FROM api_keys ORDER BY id DESC LIMIT 1")[0]
        assert _sql(dsn, "SELECT DISTINCT key_id FROM interactions") == [(key_id,)]
    finally:
        app.extensions["recs"].store.close()


# --- reads private by default --------------------------------------------------------------

def test_reads_need_a_key_by_default(settings, dsn, monkeypatch):
    """Was: RECS_READ_KEYS_REQUIRED off by default, anyone could read any user's list."""
    publish_fixture(dsn)
    monkeypatch.delenv("RECS_READ_KEYS_REQUIRED", raising=False)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    client = app.test_client()
    for path in ("/api/v1/recommendations/7", "/api/v1/similar/20", "/api/v1/trending"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert "recommendations" not in r.get_json()
    read_key = make_key(dsn, ("read",))
    r = client.get("/api/v1/recommendations/7?limit=2", headers={"X-API-Key": read_key})
    assert r.status_code == 200 and ids(r.get_json()) == [10, 11]
    assert app.extensions["recs"].read_keys_required is True
    app.extensions["recs"].store.close()


def test_demo_examples_print_a_read_key_their_reads_send(settings, dsn, capsys):
    """Was: `recs examples` printed reads without a key (they worked only because reads
    were open) and one events key for the post."""
    from cli import main as cli_main

    publish_fixture(dsn)
    assert cli_main.main(["examples", "--bind", "reader.test:8000"]) == 0
    out = capsys.readouterr().out
    curls = [line.strip() for line in out.splitlines() if line.strip().startswith("curl")]
    assert len(curls) == 4
    app = create_app({"SETTINGS": settings, "TESTING": True})
    client = app.test_client()
    try:
        for line in curls:
            key = re.search(r"-H 'X-API-Key: (recs_[\w-]+)'", line).group(1)
            assert key in out.split("Try:")[0]  # the key is printed with its scope
            if "-X POST" in line:
                body = json.loads(re.search(r"-d '(.*)'$", line).group(1))
                r = client.post("/api/v1/events", json=body, headers={"X-API-Key": key})
                assert r.status_code == 201, r.get_json()
                continue
            url = re.search(r"'http://reader\.test:8000(/api/v1/[^']+)'", line).group(1)
            assert client.get(url).status_code == 401  # reads need the key...
            r = client.get(url, headers={"X-API-Key": key})  # ...which the line sends
            assert r.status_code == 200 and r.get_json()["recommendations"], line
    finally:
        app.extensions["recs"].store.close()


# --- block rules in every answer ---------------------------------------------------------

REFRESH_S = 0.3
COUNTRY = "trending:country:US"


def _every_answer(client, dsn) -> dict[str, dict]:
    """One answer of each kind the reader gives (user 7 has a recent event on item 20, so
    its list blends the similar items of 20)."""
    paths = [
        "/api/v1/recommendations/7",  # precomputed, blended, topped up
        "/api/v1/recommendations/7?type=similar&item_id=20",
        "/api/v1/recommendations/7?type=similar",  # anchored on the recent item 20
        "/api/v1/recommendations/7?type=trending",
        "/api/v1/recommendations/7?context=product_page&item_id=5",
        "/api/v1/recommendations/8",
        "/api/v1/recommendations/999",  # no list: popular
        "/api/v1/similar/20",
        "/api/v1/similar/1",  # no list: popular
        "/api/v1/trending",
        "/api/v1/trending?category=drama",
        "/api/v1/trending?country=US",
        "/api/v1/trending?country=US&category=drama",
    ]
    out = {}
    for path in paths:
        sep = "&" if "?" in path else "?"
        r = client.get(f"{path}{sep}limit=40")
        assert r.status_code == 200, (path, r.get_json())
        out[path] = r.get_json()
    return out


def test_blocked_items_leave_every_answer(settings, dsn, tmp_path):
    """Was: block rules reached only the daily personalized lists; similar items, trending,
    popular, the blending and the top-up showed blocked items."""
    publish_fixture(dsn, lists={**LISTS, COUNTRY: [16, 17, 11, 18, 21]})
    rules_file = tmp_path / "rules.csv"
    rules_file.write_text("kind,value,slot\n# from the file\nblock_item,17,\n")
    s = settings.replace(blocks_refresh_s=REFRESH_S, rules_file=str(rules_file))
    app, client = _app(s, dsn)
    try:
        assert client.post("/api/v1/events", json=event(7, 20)).status_code == 201
        before = _every_answer(client, dsn)
        shown = {i for body in before.values() for i in ids(body)}
        # 21, 22: similar to 20 (blended, similar lists, the country list); 1: popular
        # (top-up, fallback); 11: the user lists and trending; 16: trending and popular.
        assert {1, 11, 16, 21, 22} <= shown
        assert 17 not in shown  # the file's rule, applied from the start
        assert all(b["source"] != "memory" for b in before.values())

        _sql(dsn, "UPDATE items SET category = 'Horror' WHERE item_id = 16")
        _sql(dsn, "UPDATE items SET tags = '{Gore,action}' WHERE item_id = 11")
        _sql(dsn, "INSERT INTO rerank_rules (kind, value) VALUES ('block_item', '21'), "
                  "('block_item', '22'), ('block_item', '1'), ('block_category', 'Horror'), "
                  "('block_tag', 'gore')")
        blocked = {1, 11, 16, 17, 21, 22}
        time.sleep(REFRESH_S + 0.2)
        after = _every_answer(client, dsn)
        for path, body in after.items():
            assert not blocked & set(ids(body)), (path, ids(body))
            assert body["source"] != "memory", path
        # The lists go on after the blocked items (nothing else went missing).
        assert ids(after["/api/v1/similar/20"])[:2] == [23, 10]
        assert ids(after["/api/v1/recommendations/8"])[:3] == [10, 2, 3]

        # The database answering too slowly: the fallback from memory leaves them out too.
        blocker = psycopg2.connect(dsn)
        try:
            with blocker.cursor() as cur:
                cur.execute("LOCK TABLE serving_state IN ACCESS EXCLUSIVE MODE")
            body = client.get("/api/v1/recommendations/7?limit=40").get_json()
            assert body["source"] == "memory"
            assert ids(body) and not blocked & set(ids(body))
        finally:
            blocker.rollback()
            blocker.close()
        time.sleep(0.6)  # the breaker's back-off

        # Rules unreadable (a lock on the table): the last set is kept, and the answers
        # do not wait for the lock (no query per request).
        blocker = psycopg2.connect(dsn)
        try:
            with blocker.cursor() as cur:
                cur.execute("LOCK TABLE rerank_rules IN ACCESS EXCLUSIVE MODE")
            time.sleep(REFRESH_S + 0.1)
            for _ in range(3):
                for path, body in _every_answer(client, dsn).items():
                    assert not blocked & set(ids(body)), path
        finally:
            blocker.rollback()
            blocker.close()

        # A lifted rule comes back within the refresh time.
        _sql(dsn, "DELETE FROM rerank_rules WHERE kind = 'block_item' AND value = '21'")
        time.sleep(REFRESH_S + 0.2)
        assert 21 in ids(client.get("/api/v1/similar/20?limit=3").get_json())
    finally:
        app.extensions["recs"].store.close()


def test_bad_rule_file_stops_the_reader_at_start(settings, dsn, tmp_path):
    rules_file = tmp_path / "rules.csv"
    rules_file.write_text("kind,value,slot\nblock_thing,17,\n")
    from core.settings import SettingsError

    with pytest.raises(SettingsError, match=r"rules.csv:2"):
        create_app({"SETTINGS": settings.replace(rules_file=str(rules_file)),
                    "TESTING": True})


# --- one slow user cannot open the breaker -------------------------------------------------

HEAVY_USER = 77
HEAVY_EVENTS = 100_000


def test_a_user_with_a_huge_history_does_not_open_the_breaker(settings, dsn):
    """Was: the recent-events scan read all of a user's events since the lists were made
    (100,000 here: longer than the statement timeout), and one statement timeout opened the
    worker's breaker for reads and writes alike: other users got the fallback from memory
    and event posts a 503."""
    publish_fixture(dsn)
    day = NOW.date()
    _sql(dsn, "SELECT recs_ensure_interaction_partitions(%s, %s)",
         (day - dt.timedelta(days=1), day + dt.timedelta(days=1)))
    _sql(dsn, """INSERT INTO interactions (event_id, user_id, item_id, event_type,
                                           "timestamp")
                 SELECT nextval('interactions_event_id_seq'), %s, 1000 + g %% 20000, 'click',
                        %s::timestamptz - g * interval '30 milliseconds'
                 FROM generate_series(1, %s) g""",
         (HEAVY_USER, NOW, HEAVY_EVENTS))
    _sql(dsn, "ANALYZE interactions")
    assert _sql(dsn, 'SELECT min("timestamp") > %s FROM interactions', (DATA_UNTIL,)) \
        == [(True,)]
    app, client = _app(settings.replace(statement_timeout_ms=60), dsn,
                       STORE_BACKOFF_S=1.0)
    try:
        answers, posts, heavy = [], [], []
        next_heavy = 0.0
        end = time.monotonic() + 6.0
        n = 0
        while time.monotonic() < end:
            if time.monotonic() >= next_heavy:
                heavy.append(client.get(f"/api/v1/recommendations/{HEAVY_USER}?limit=5"))
                next_heavy = time.monotonic() + 0.3
            user = list(USER_LISTS)[n % len(USER_LISTS)]
            answers.append(client.get(f"/api/v1/recommendations/{user}?limit=3").get_json())
            if n % 3 == 0:
                posts.append(client.post("/api/v1/events", json=event(
                    user, 30, DATA_UNTIL - dt.timedelta(hours=1))).status_code)
            n += 1
            time.sleep(0.02)
        assert len(heavy) >= 15 and all(r.status_code == 200 for r in heavy)
        sources = [a["source"] for a in answers]
        assert sources.count("precomputed") == len(answers), \
            {s: sources.count(s) for s in set(sources)}
        assert posts and set(posts) == {201}, posts
        # The heavy user's own answers come from the database too (the scan is bounded).
        assert [r.get_json()["source"] for r in heavy].count("memory") <= 1
    finally:
        app.extensions["recs"].store.close()


def test_breaker_opens_on_a_rate_or_a_lost_connection():
    """The breaker's rule on its own (a clock that the test moves)."""
    now = [0.0]
    b = Breaker("read", backoff_s=1.0, clock=lambda: now[0])
    timeout = psycopg2.extensions.QueryCanceledError("canceling statement")
    # One slow user: a timeout every 0.3 s among 30 good calls a second never opens it.
    for i in range(300):
        now[0] += 1 / 30
        assert b.admit() is False
        assert b.record(i % 10 == 0, exc=timeout) is False
    # Most calls failing: open once at least half of at least 10 calls of the last 5 s
    # failed (about 135 good and 15 failed calls are in the window when they start).
    opened = [b.record(True, exc=timeout) for _ in range(200)]
    assert 115 <= opened.index(True) <= 125 and b.is_down
    # After a quiet spell, 10 failures in a row.
    now[0] += 10.0
    b.record(False, probe=b.admit())
    opened = [b.record(True, exc=timeout) for _ in range(20)]
    assert opened.index(True) == 9 and b.is_down
    with pytest.raises(DatabaseUnavailable) as info:
        b.admit()
    assert info.value.cause == "backing_off"
    # Half open after the back-off: one probe; its success closes the breaker.
    now[0] += 1.1
    assert b.admit() is True
    with pytest.raises(DatabaseUnavailable):
        b.admit()  # the others still fail at once while the probe runs
    b.record(False, probe=True)
    assert not b.is_down and b.admit() is False
    # A lost connection opens it at once.
    assert b.record(True, fatal=True, exc=psycopg2.OperationalError("gone")) is True
    assert b.is_down


def test_failing_writes_do_not_refuse_reads(settings, dsn):
    """Each breaker counts its own calls: event posts timing out (inserts wait on a lock)
    open the writes' breaker; reads go on from the database."""
    publish_fixture(dsn)
    app, client = _app(settings.replace(statement_timeout_ms=100), dsn, STORE_BACKOFF_S=5.0)
    blocker = psycopg2.connect(dsn)
    try:
        assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
            == "precomputed"
        with blocker.cursor() as cur:  # SHARE: blocks inserts, not reads
            cur.execute("LOCK TABLE interactions IN SHARE MODE")
        codes = [client.post("/api/v1/events", json=event(7, 20)).status_code
                 for _ in range(14)]
        assert set(codes) == {503}, codes
        for _ in range(5):
            body = client.get("/api/v1/recommendations/7?limit=2").get_json()
            assert body["source"] == "precomputed" and ids(body) == [10, 11]
        store = app.extensions["recs"].store
        assert store.breakers["write"].is_down and not store.breakers["read"].is_down
        # Refused at once once open (no wait for the lock).
        t0 = time.monotonic()
        assert client.post("/api/v1/events", json=event(7, 20)).status_code == 503
        assert time.monotonic() - t0 < 0.05
    finally:
        blocker.rollback()
        blocker.close()
        app.extensions["recs"].store.close()


def test_one_statement_timeout_does_not_open_the_breaker(settings, dsn):
    """Was: any one statement timeout opened the breaker (every read then answered from
    memory for the back-off)."""
    publish_fixture(dsn)
    app, client = _app(settings.replace(statement_timeout_ms=100), dsn, STORE_BACKOFF_S=5.0)
    try:
        assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
            == "precomputed"
        blocker = psycopg2.connect(dsn)
        try:
            with blocker.cursor() as cur:
                cur.execute("LOCK TABLE serving_state IN ACCESS EXCLUSIVE MODE")
            assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
                == "memory"
        finally:
            blocker.rollback()
            blocker.close()
        for _ in range(5):
            assert client.get("/api/v1/recommendations/7?limit=2").get_json()["source"] \
                == "precomputed"
    finally:
        app.extensions["recs"].store.close()


# --- /readyz -------------------------------------------------------------------------------

def test_readyz_shows_no_driver_text(settings):
    """Was: ``database unavailable: connection to server at "127.0.0.1", port ... failed``
    (host, port, user and the server's message)."""
    port = free_port()  # nothing listens there
    s = settings.replace(database_url=f"postgresql://secretuser@127.0.0.1:{port}/recs")
    app = create_app({"SETTINGS": s, "TESTING": True, "STORE_BACKOFF_S": 0.05})
    time.sleep(0.1)  # past the back-off of the start-up's failure: readyz tries to connect
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["error"]["message"] == "database unavailable (database_unavailable)"
    for secret in ("127.0.0.1", str(port), "secretuser", "connection"):
        assert secret not in r.get_data(as_text=True)
