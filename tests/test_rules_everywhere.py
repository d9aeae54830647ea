"""Block rules reach every list the jobs write, against real Postgres and a real version.

- The daily run (precompute and publish): no blocked item in any published similar,
  trending or popular list, nor in a user's list.
- A rule added while a version is live: after one nearline and one hourly run no list of
  the live version holds the item (the rewritten user's list, similar lists, trending
  lists, the "New in" pools), whether the rule is in ``rerank_rules`` or in the file
  ``RECS_RULES_FILE``, by item or by category; and no endpoint of the reader returns it.
"""

from __future__ import annotations

import pandas as pd
import pytest

from core import settings as settings_mod
from tests.test_nearline import (
    DAY,
    build_live_version,
    make_live,
    other_category_items,
    post_events,
    sql,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    yield from make_live(dsn, tmp_path, monkeypatch)


def lists_holding(dsn: str, version: str, items: list[int]) -> dict[str, int]:
    """Rows of each list table of ``version`` holding any of ``items``."""
    return {table: sql(dsn, f"SELECT count(*) FROM {table} WHERE model_version = %s "
                            "AND items && %s::bigint[]", (version, items))[0][0]
            for table in ("recommendations", "similar_items", "trending")}


def item_in_every_kind_of_list(dsn: str, version: str) -> tuple[int, int]:
    """An item found in a similar list, a trending list and a user's list; and a user
    whose list holds it."""
    rows = sql(dsn, """
        WITH r AS (SELECT DISTINCT unnest(items) AS item_id FROM recommendations
                   WHERE model_version = %(v)s),
             s AS (SELECT DISTINCT unnest(items) AS item_id FROM similar_items
                   WHERE model_version = %(v)s),
             t AS (SELECT DISTINCT unnest(items) AS item_id FROM trending
                   WHERE model_version = %(v)s AND list_name LIKE 'trending%%')
        SELECT item_id FROM r JOIN s USING (item_id) JOIN t USING (item_id)
        ORDER BY item_id LIMIT 1""", {"v": version})
    assert rows, "the fixture version should have an item in all three kinds of list"
    item = rows[0][0]
    user = sql(dsn, "SELECT min(user_id) FROM recommendations WHERE model_version = %s "
                    "AND %s = ANY(items)", (version, item))[0][0]
    return item, user


def test_a_rule_added_while_live_reaches_every_list_after_nearline_and_hourly(
        live, tmp_path, monkeypatch):
    from jobs import hourly, nearline

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)  # sets the watermark
    item, user = item_in_every_kind_of_list(dsn, version)
    assert all(lists_holding(dsn, version, [item]).values())
    # A second item by the rule file, and a whole category by the table.
    other = sql(dsn, "SELECT min(x) FROM (SELECT unnest(items) AS x FROM similar_items "
                     "WHERE model_version = %s) s WHERE x <> %s", (version, item))[0][0]
    category = sql(dsn, "SELECT category FROM items WHERE category IS NOT NULL "
                        "AND item_id NOT IN (%s, %s) GROUP BY category "
                        "ORDER BY count(*), category LIMIT 1", (item, other))[0][0]
    in_category = [r[0] for r in sql(dsn, "SELECT item_id FROM items WHERE category = %s",
                                     (category,))]
    assert lists_holding(dsn, version, in_category)["recommendations"]
    rules = tmp_path / "rules.csv"
    rules.write_text(f"kind,value,slot\nblock_item,{other},\n")
    monkeypatch.setenv("RECS_RULES_FILE", str(rules))
    monkeypatch.setattr(settings_mod, "_cached", None)
    sql(dsn, "INSERT INTO rerank_rules (kind, value, note) VALUES ('block_item', %s, 'test'), "
             "('block_category', %s, 'test')", (str(item), category))
    blocked = [item, other, *in_category]

    # The user acts: nearline rewrites the user's list without the blocked items.
    post_events(dsn, [(user, i, "view") for i in other_category_items(dsn, user, 2)])
    out = nearline.run(dsn=dsn)
    assert out["users_updated"] == 1
    (items,), = sql(dsn, "SELECT items FROM recommendations WHERE model_version = %s "
                         "AND user_id = %s", (version, user))
    assert not set(items) & set(blocked) and len(items) > 0
    assert lists_holding(dsn, version, blocked)["similar_items"]  # hourly's part

    # New items join the "New in" pools; one of them in the blocked category.
    new_ids = [900_001, 900_002]
    sql(dsn, "INSERT INTO items (item_id, title, category, created_at, updated_at) VALUES "
             "(900001, 'Fresh Blocked', %s, now(), now()), "
             "(900002, 'Fresh Fine', (SELECT min(category) FROM items WHERE category <> %s), "
             "now(), now())", (category, category))
    out = hourly.run(dsn=dsn)
    assert lists_holding(dsn, version, [*blocked, new_ids[0]]) == {
        "recommendations": 0, "similar_items": 0, "trending": 0}
    assert sum(out["blocked_removed"].values()) > 0
    assert sql(dsn, "SELECT count(*) FROM trending WHERE model_version = %s "
                    "AND list_name LIKE 'new:category:%%' AND %s = ANY(items)",
               (version, new_ids[1]))[0][0] == 1  # the pools are still filled
    assert sql(dsn, "SELECT count(*) FROM bandit_arms WHERE item_id = %s",
               (new_ids[0],))[0][0] == 0

    # And no endpoint of the reader returns them (serve/ filters answers too).
    from serve.app import create_app
    from tests.test_serve import make_key

    client = create_app({"SETTINGS": settings_mod.get()}).test_client()
    headers = {"X-API-Key": make_key(dsn, ("read",))}
    sources = sql(dsn, "SELECT DISTINCT item_id FROM similar_items WHERE model_version = %s "
                       "ORDER BY 1 LIMIT 20", (version,))
    paths = [f"/api/v1/recommendations/{user}?limit=50",
             f"/api/v1/recommendations/{user}?type=similar&limit=50",
             f"/api/v1/recommendations/{user}?type=trending&limit=50",
             "/api/v1/trending?limit=100", "/api/v1/recommendations/999999?limit=100",
             *(f"/api/v1/similar/{i}?limit=50" for (i,) in sources)]
    for path in paths:
        r = client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.get_json())
        shown = {e["item_id"] for e in r.get_json()["recommendations"]}
        assert shown and not shown & {*blocked, new_ids[0]}, path


def test_the_daily_run_publishes_no_blocked_item_in_any_list(dsn, tmp_path, monkeypatch):
    for key, value in {"RECS_DATABASE_URL": dsn, "RECS_HOME": str(tmp_path / "home"),
                       "RECS_ALS_RANK": "8", "RECS_ALS_REG": "0.1", "RECS_TOP_K": "20",
                       "RECS_SIMILAR_K": "10", "RECS_GATE_MARGIN": "-1",
                       "RECS_TWO_TOWER_EPOCHS": "3", "RECS_RANKER_EPOCHS": "5"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings_mod, "_cached", None)
    # Items 1-3 are among the synthetic data's most popular; the rules exist before the
    # daily run (the loader's catalog is the same for every run of this seed).
    sql(dsn, "INSERT INTO rerank_rules (kind, value, note) VALUES ('block_item', '1', 't'), "
             "('block_item', '2', 't'), ('block_item', '3', 't')")
    info = build_live_version(dsn)
    version = info["version"]
    assert sql(dsn, "SELECT live_version FROM serving_state")[0][0] == version
    assert lists_holding(dsn, version, [1, 2, 3]) == {
        "recommendations": 0, "similar_items": 0, "trending": 0}
    assert sql(dsn, "SELECT count(*) FROM trending WHERE model_version = %s "
                    "AND list_name = 'popular' AND cardinality(items) > 0",
               (version,))[0][0] == 1
    # The day's item statistics (computed before any rule applies) did rank them: the
    # publish step kept them out.
    (path,), = sql(dsn, "SELECT artifacts->>'item_stats' FROM model_runs "
                        "WHERE model_version = %s AND logical_date = %s", (version, DAY))
    assert {1, 2, 3} & set(pd.read_parquet(path)["item_id"].tolist())
    settings_mod._cached = None
