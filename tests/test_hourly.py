"""Hourly against a real Postgres, a really published version and the real MiniLM model:
incremental embeddings, a new item in similar lists and users' lists within one run (no
ALS retrain), the "New in" pools, the bandit's counters, and a failed run that changes
nothing. The pure pieces (bandit, placement) are checked against hand-made cases.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tests.test_nearline import make_live, post_events, sql


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    """A published version on a fresh database (tests/test_nearline.py:make_live)."""
    yield from make_live(dsn, tmp_path, monkeypatch)


class CountingEncoder:
    """The real encoder, remembering what it was asked to embed."""

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, texts):
        from models.text import encode

        self.texts.extend(texts)
        return encode(texts)


def add_item(dsn: str, item_id: int, like: int, suffix: str = " Returns") -> tuple[str, str]:
    """A new item (created now) whose text is close to item ``like``'s."""
    title, category, tags = sql(dsn, "SELECT title, category, tags FROM items "
                                     "WHERE item_id = %s", (like,))[0]
    sql(dsn, "INSERT INTO items (item_id, title, category, tags) VALUES (%s, %s, %s, %s)",
        (item_id, title + suffix, category, tags))
    return title + suffix, category


def rec_row(dsn: str, version: str, user: int):
    return sql(dsn, "SELECT items, reasons FROM recommendations WHERE model_version = %s "
                    "AND user_id = %s", (version, user))[0]


def test_embeddings_are_incremental(live):
    from jobs import hourly
    from models.text import MODEL_VERSION, encode, item_text

    dsn = live["dsn"]
    n_items = sql(dsn, "SELECT count(*) FROM items")[0][0]
    enc = CountingEncoder()
    first = hourly.run(dsn=dsn, encoder=enc)
    assert first["items_embedded"] == n_items == len(enc.texts)
    stored = sql(dsn, "SELECT count(*) FROM embeddings WHERE entity_type = 'item' "
                      "AND model_ver = %s", (MODEL_VERSION,))[0][0]
    assert stored == n_items
    store = pd.read_parquet(hourly.text_store_path())
    assert len(store) == n_items and len(store["vector"].iloc[0]) == 384

    enc2 = CountingEncoder()
    assert hourly.run(dsn=dsn, encoder=enc2)["items_embedded"] == 0 and enc2.texts == []

    sql(dsn, "UPDATE items SET title = 'A Completely Different Title', updated_at = now() "
             "WHERE item_id = 7")
    enc3 = CountingEncoder()
    out = hourly.run(dsn=dsn, encoder=enc3)
    title, category, tags = sql(dsn, "SELECT title, category, tags FROM items "
                                     "WHERE item_id = 7")[0]
    assert out["items_embedded"] == 1 and enc3.texts == [item_text(title, category, tags)]
    vec = sql(dsn, "SELECT vector FROM embeddings WHERE entity_id = 7 AND model_ver = %s",
              (MODEL_VERSION,))[0][0]
    np.testing.assert_allclose(vec, encode([enc3.texts[0]])[0], atol=1e-5)
    store = pd.read_parquet(hourly.text_store_path()).set_index("item_id")
    np.testing.assert_allclose(store.loc[7, "vector"], vec, atol=1e-6)


def test_a_new_item_reaches_similar_lists_and_users_within_one_run(live):
    from jobs import hourly

    dsn, version = live["dsn"], live["version"]
    hourly.run(dsn=dsn)  # the catalog's embeddings
    runs_before = sql(dsn, "SELECT count(*) FROM model_runs")[0][0]
    twin = 11
    new_id = 900_001
    title, category = add_item(dsn, new_id, twin)
    # Users who engaged with the new item's category in the last days.
    users = [r[0] for r in sql(dsn, "SELECT user_id FROM recommendations "
                                    "ORDER BY user_id LIMIT 6")]
    cat_items = [r[0] for r in sql(dsn, "SELECT item_id FROM items WHERE category = %s "
                                        "AND item_id <> %s ORDER BY item_id LIMIT 3",
                                   (category, new_id))]
    post_events(dsn, [(u, i, "view") for u in users for i in cat_items])

    out = hourly.run(dsn=dsn)
    assert out["version"] == version and out["cold_processed"] >= 1
    # Its own similar list, from text similarity: the twin first.
    own = sql(dsn, "SELECT item_id, reason FROM live_similar_items "
                   "WHERE source_item_id = %s ORDER BY rank", (new_id,))
    assert own and own[0][0] == twin and own[0][1] == f"Similar to {title}"
    # It joined the similar lists of its nearest items, the twin's among them.
    joined = [r[0] for r in sql(dsn, "SELECT source_item_id FROM live_similar_items "
                                     "WHERE item_id = %s", (new_id,))]
    assert twin in joined
    twin_list = sql(dsn, "SELECT item_id FROM live_similar_items WHERE source_item_id = %s "
                         "ORDER BY rank", (twin,))
    assert twin_list[2][0] == new_id  # at the fixed slot (3)
    # The "New in <category>" pool.
    pool = sql(dsn, "SELECT item_id, reason FROM live_trending WHERE list_name = %s",
               (f"new:category:{category}",))
    assert (new_id, f"New in {category}") in pool
    # Users active in that category got it at position 5, with the reason.
    placed = 0
    for u in users:
        items, reasons = rec_row(dsn, version, u)
        if new_id in items:
            assert items.index(new_id) == 4 and reasons[4] == f"New in {category}"
            placed += 1
    assert placed >= 1
    impressions, clicks = sql(dsn, "SELECT impressions, clicks FROM bandit_arms "
                                   "WHERE item_id = %s", (new_id,))[0]
    assert impressions == out["users_given_new_item"] >= placed and clicks == 0
    # Without retraining ALS: the same live version, no new model run.
    assert sql(dsn, "SELECT live_version FROM serving_state")[0][0] == version
    assert sql(dsn, "SELECT count(*) FROM model_runs")[0][0] == runs_before


def test_clicks_are_counted_once_per_window(live):
    from jobs import hourly

    dsn = live["dsn"]
    hourly.run(dsn=dsn)
    new_id = 900_002
    add_item(dsn, new_id, 12)
    hourly.run(dsn=dsn)
    users = [r[0] for r in sql(dsn, "SELECT user_id FROM recommendations "
                                    "ORDER BY user_id LIMIT 3")]
    post_events(dsn, [(u, new_id, "click") for u in users] + [(users[0], new_id, "view")])
    hourly.run(dsn=dsn)
    assert sql(dsn, "SELECT clicks FROM bandit_arms WHERE item_id = %s",
               (new_id,))[0][0] == 3
    hourly.run(dsn=dsn)
    assert sql(dsn, "SELECT clicks FROM bandit_arms WHERE item_id = %s",
               (new_id,))[0][0] == 3


def test_a_failed_run_changes_nothing(live, monkeypatch):
    from jobs import hourly

    dsn = live["dsn"]
    hourly.run(dsn=dsn)
    add_item(dsn, 900_003, 13)
    before = {
        "wm": sql(dsn, "SELECT value FROM pipeline_watermarks WHERE name = 'hourly'"),
        "emb": sql(dsn, "SELECT count(*) FROM embeddings WHERE entity_type = 'item'"),
        "sim": sql(dsn, "SELECT item_id, items FROM similar_items ORDER BY item_id"),
    }

    def boom(*args, **kwargs):
        raise RuntimeError("lost connection")

    with monkeypatch.context() as m:
        m.setattr(hourly, "pool_lists", boom)  # late in the write transaction
        with pytest.raises(RuntimeError, match="lost connection"):
            hourly.run(dsn=dsn)
    assert sql(dsn, "SELECT value FROM pipeline_watermarks WHERE name = 'hourly'") == \
        before["wm"]
    assert sql(dsn, "SELECT count(*) FROM embeddings WHERE entity_type = 'item'") == \
        before["emb"]
    assert sql(dsn, "SELECT item_id, items FROM similar_items ORDER BY item_id") == \
        before["sim"]
    out = hourly.run(dsn=dsn)  # the same item again
    assert out["items_embedded"] == 1 and out["cold_processed"] == 1


def test_a_new_version_gets_the_cold_items_again(live):
    from jobs import hourly

    dsn = live["dsn"]
    hourly.run(dsn=dsn)
    add_item(dsn, 900_004, 14)
    assert hourly.run(dsn=dsn)["cold_processed"] == 1
    assert hourly.run(dsn=dsn)["cold_processed"] == 0  # nothing changed
    sql(dsn, "UPDATE pipeline_watermarks SET model_version = 'v-older' WHERE name = 'hourly'")
    assert hourly.run(dsn=dsn)["cold_processed"] == 1


# --- pure pieces --------------------------------------------------------------------------

def test_thompson_sampling_is_seeded_and_favours_engaging_items():
    from models import bandit

    imp = np.array([1000, 1000, 20])
    clk = np.array([300, 10, 2])
    cands = [np.array([0, 1, 2])] * 2000
    a = bandit.choose(cands, imp, clk, bandit.run_rng(42, 1_700_000_000))
    b = bandit.choose(cands, imp, clk, bandit.run_rng(42, 1_700_000_000))
    c = bandit.choose(cands, imp, clk, bandit.run_rng(42, 1_700_003_600))
    assert (a == b).all() and not (a == c).all()
    share = np.bincount(a, minlength=3) / len(a)
    # The proven item wins most slots, the little-known one still explores, the poor fades.
    assert share[0] > 0.9 and 0.01 < share[2] < 0.1 and share[1] < 0.005
    # An item nobody has seen yet beats a poor one most of the time.
    fresh = bandit.choose([np.array([0, 1])] * 500, np.array([1000, 0]), np.array([10, 0]),
                          bandit.run_rng(42, 1))
    assert (fresh == 1).mean() > 0.9
    assert bandit.choose([np.array([], dtype="int64")], imp, clk,
                         bandit.run_rng(1, 1))[0] == -1
    np.testing.assert_allclose(bandit.posterior_mean(np.array([0, 8]), np.array([0, 2])),
                               [0.5, 0.3])


def test_place_new_items_uses_the_slot_and_skips_consumed():
    from jobs.hourly import place_new_items
    from models import bandit

    rows = {1: ([10, 11, 12, 13, 14, 15], [6.0, 5, 4, 3, 2, 1], ["w"] * 6, [9] * 6),
            2: ([10, 11, 12, 13, 14, 15], [6.0, 5, 4, 3, 2, 1], ["w"] * 6, [9] * 6),
            3: ([20, 21, 22, 50, 23], [5.0, 4, 3, 2.5, 2], ["w", "w", "w", "New in x", "w"],
                [9, 9, 9, -1, 9])}
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "categories": [["x"], ["x"], ["y"], ["x"]]})
    arms = pd.DataFrame({"item_id": [50, 60], "category": ["x", "y"],
                         "impressions": [0, 0], "clicks": [0, 0]})
    changed, shown = place_new_items(rows, users, arms, {2: {50}}, bandit.run_rng(0, 0),
                                     slot=5)
    by_user = {c[0]: c for c in changed}
    assert set(by_user) == {1, 3}  # user 2 consumed the only x item; user 4 has no list
    assert by_user[1][1] == [10, 11, 12, 13, 50, 14] and by_user[1][3][4] == "New in x"
    assert by_user[1][2][4] == 2  # the score of the slot it fills
    assert by_user[3][1] == [20, 21, 22, 23, 60] and by_user[3][3][4] == "New in y"
    assert shown == {50: 1, 60: 1}


def test_user_categories_bounds_and_orders():
    from jobs.hourly import user_categories

    ts = pd.Timestamp("2026-11-01", tz="UTC")
    activity = pd.DataFrame({
        "user_id": [1, 1, 2, 3, 3],
        "category": ["a", "b", "a", "c", "a"],
        "n": [1, 5, 2, 3, 3],
        "last": [ts, ts, ts + dt.timedelta(hours=1), ts - dt.timedelta(days=1), ts]})
    out = user_categories(activity, max_users=2, top=1)
    assert out["user_id"].tolist() == [2, 1]
    assert out["categories"].tolist() == [["a"], ["b"]]


def test_params_from_settings_and_environment():
    from core import settings as settings_mod
    from jobs.hourly import params_from_settings

    s = settings_mod.load(env={"RECS_NEW_ITEM_DAYS": "3", "RECS_NEW_ITEM_SLOT": "2"}, seed=7)
    p = params_from_settings(s)
    assert (p.new_days, p.slot, p.active_days, p.seed) == (3, 2, 7, 7)
    with pytest.raises(ValueError, match="RECS_NEW_ITEM_MAX_USERS='many'"):
        settings_mod.load(env={"RECS_NEW_ITEM_MAX_USERS": "many"})
    with pytest.raises(ValueError, match="RECS_NEW_ITEM_SLOT=0"):
        settings_mod.load(env={"RECS_NEW_ITEM_SLOT": "0"})
