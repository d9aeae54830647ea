"""reason_item_id is null, never -1, for a reason that names no item ("Trending in ...",
"New in ..."), in the reader's JSON and in the analyst view; a "Because you watched"
reason keeps its item. The lists store -1 (core.constants.NO_REASON_ITEM) in their
arrays, as every job writes them; the fixture stores exactly that.
"""

from __future__ import annotations

import psycopg2
import pytest

from core.constants import NO_REASON_ITEM
from serve.app import create_app
from tests.conftest import role_url
from tests.test_serve import DATA_UNTIL, VERSION, _scores, make_key, publish_fixture

USER = 60
ITEMS = [30, 31, 32, 33]
REASONS = ["Because you watched Movie 5", "Trending in drama", "New in comedy",
           "Popular in DE"]
REASON_IDS = [5, NO_REASON_ITEM, NO_REASON_ITEM, NO_REASON_ITEM]


@pytest.fixture
def published(dsn):
    publish_fixture(dsn)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO recommendations (model_version, user_id, items, scores, "
                        "reasons, reason_item_ids, history_tail, computed_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, '{5}', %s)",
                        (VERSION, USER, ITEMS, _scores(len(ITEMS)), REASONS, REASON_IDS,
                         DATA_UNTIL))
    finally:
        conn.close()
    return dsn


def test_api_answers_null_for_a_reason_without_an_item(published, settings):
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = make_key(published, ("read",))
        body = client.get(f"/api/v1/recommendations/{USER}?limit=4").get_json()
    finally:
        app.extensions["recs"].store.close()
    got = [(r["item_id"], r["reason"], r["reason_item_id"]) for r in body["recommendations"]]
    assert got == [(30, REASONS[0], 5), (31, REASONS[1], None), (32, REASONS[2], None),
                   (33, REASONS[3], None)]


def test_analyst_view_answers_null_for_a_reason_without_an_item(published):
    conn = psycopg2.connect(role_url(published, "recs_analyst"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rank, item_id, reason, reason_item_id FROM live_recommendations "
                        "WHERE user_id = %s ORDER BY rank", (USER,))
            rows = cur.fetchall()
            # The analyst's join on the reason's item finds the real item only.
            cur.execute("SELECT count(*) FROM live_recommendations r JOIN items i "
                        "ON i.item_id = r.reason_item_id WHERE r.user_id = %s", (USER,))
            joined = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM live_recommendations WHERE reason_item_id < 0")
            negative = cur.fetchone()[0]
    finally:
        conn.close()
    assert rows == [(1, 30, REASONS[0], 5), (2, 31, REASONS[1], None),
                    (3, 32, REASONS[2], None), (4, 33, REASONS[3], None)]
    assert joined == 1 and negative == 0
