"""The reader over a large published version: which versions have lists is asked of the
partition of the version asked about, never of another version's rows.

Found with ``python -m bench.load --users 1000000``: right after the first publish of a
large version (one partition, no previous version) the reader's live-version check read
every row of that partition to find no row of the (null) previous version: 480 ms for a
million users, past the reads' statement timeout, so every request was answered from
memory. Here the fixture's partition is grown to 1.5 million short lists (a few seconds
of INSERT ... SELECT) and the reader runs with a 60 ms statement timeout: the old check
took several times that; the per-version checks take well under a millisecond.
"""

from __future__ import annotations

import time

import psycopg2
import pytest

from serve.app import create_app
from tests.test_serve import VERSION, make_key, publish_fixture

pytestmark = pytest.mark.integration

USERS = 1_500_000
TIMEOUT_MS = 60


def grow(dsn: str, version: str, first_user: int, n: int) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO recommendations (model_version, user_id, items, scores, reasons, "
            "reason_item_ids, computed_at) SELECT %s, g, ARRAY[10, 11]::bigint[], "
            "ARRAY[0.9, 0.8]::real[], ARRAY['Popular', 'Popular'], ARRAY[-1, -1]::bigint[], "
            "now() FROM generate_series(%s, %s) AS g", (version, first_user, first_user + n - 1))
        cur.execute("ANALYZE recommendations")
    conn.close()


def reader(settings):
    """An in-process reader with the short statement timeout (and lists in their order)."""
    return create_app({"SETTINGS": settings.replace(statement_timeout_ms=TIMEOUT_MS,
                                                    exploration_rate=0.0), "TESTING": True})


def served(client, key: str, path: str) -> dict:
    r = client.get(path, headers={"X-API-Key": key})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def test_a_large_first_version_is_served_from_its_lists(settings, dsn):
    publish_fixture(dsn)  # one partition; serving_state.previous_version is null
    grow(dsn, VERSION, 100_000, USERS)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT live_version, previous_version FROM serving_state")
        assert cur.fetchone() == (VERSION, None)
    conn.close()
    key = make_key(dsn, ("read",))
    app = reader(settings)
    try:
        client = app.test_client()
        t0 = time.monotonic()
        for user in (7, 100_000, 100_000 + USERS - 1):
            body = served(client, key, f"/api/v1/recommendations/{user}?limit=2")
            assert body["source"] == "precomputed" and not body["fallback"], body
            assert body["model_version"] == VERSION
        # A user without a list gets the version's popular items, not the memory answer.
        body = served(client, key, "/api/v1/recommendations/99?limit=2")
        assert body["model_version"] == VERSION and body["source"] != "memory", body
        assert time.monotonic() - t0 < 5
    finally:
        app.extensions["recs"].store.close()


def test_versions_named_but_not_kept_cost_no_scan(settings, dsn):
    """The previous version named by serving_state has no partition (retired) while the
    live one's holds the rows: the live version is served, and a live version whose
    lists are missing falls back to the previous one's only when that one has them."""
    publish_fixture(dsn)
    grow(dsn, VERSION, 100_000, USERS)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO model_runs (model_version, status, finished_at, published_at) "
                    "VALUES ('v-retired', 'published', now(), now())")
        cur.execute("UPDATE serving_state SET previous_version = 'v-retired'")
    conn.close()
    key = make_key(dsn, ("read",))
    app = reader(settings)
    try:
        store = app.extensions["recs"].store
        assert store.has_lists(VERSION) and not store.has_lists("v-retired")
        assert not store.has_lists("v-never")
        body = served(app.test_client(), key, "/api/v1/recommendations/100001?limit=2")
        assert body["source"] == "precomputed" and body["model_version"] == VERSION, body
    finally:
        app.extensions["recs"].store.close()
