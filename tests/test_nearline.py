"""Nearline against a real Postgres and a really published version.

The live version is built by the daily pipeline's own functions (extract, prepare,
text embeddings, two-tower, item_stats, build_index, ranker, precompute, evaluate,
publish) on small synthetic data, with the numpy reference ALS (models/als.py, tested
against Spark in test_als.py) in place of the Spark job and without co-visitation (that
generator is then off; tests/test_covisit.py covers it), so that no JVM starts. Events
are then inserted the way the reader inserts them, and jobs/nearline.py is called
directly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from core import settings as settings_mod

DAY = dt.date(2026, 10, 31)  # the synthetic data's newest day


def train_numpy(pairs: dict) -> None:
    """Write ALS factors and co-visitation tables as jobs/train_als.py and jobs/covisit.py
    do, computed by the tests' references (numpy ALS, the plain-Python co-visitation of
    tests/test_covisit.py), so no JVM starts."""
    from jobs.daily import FITS
    from jobs.train_als import Factors, save_factors
    from models.als import fit
    from tests.test_covisit import reference as covisit_reference

    s = settings_mod.get()

    for name, part in FITS.items():
        frame = pd.read_parquet(pairs[part])
        users, u = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
        items, i = np.unique(frame["item_id"].to_numpy(), return_inverse=True)
        matrix = np.zeros((len(users), len(items)))
        matrix[u, i] = frame["weight"].to_numpy()
        uf, itf = fit(matrix, s.als_rank, s.als_reg, s.als_alpha, iters=8, seed=s.seed)
        save_factors(Factors(users, uf.astype("float32"), items, itf.astype("float32")),
                     Path(pairs["als_dir"]) / name)
        out = Path(pairs["covisit_dir"]) / name
        out.mkdir(parents=True, exist_ok=True)
        table = covisit_reference(frame, window=s.covisit_window, top=s.covisit_top,
                                  min_count=s.covisit_min_count)
        assert len(table), "the synthetic data should co-visit"
        table.to_parquet(out / "covisit.parquet", index=False)


def daily_steps(day: dt.date, publish: bool = True) -> dict:
    """The daily pipeline's steps for ``day`` in this process, with the numpy ALS and
    co-visitation references in place of the Spark jobs; publishes when the gate passes
    (and ``publish``). Returns every step's output by name."""
    from jobs import daily

    ex = daily.extract(day)
    pairs = daily.prepare(day, ex)
    train_numpy(pairs)
    text = daily.text_embeddings(day, ex)
    tt = daily.train_two_tower(day, pairs, ex, text)
    stats = daily.item_stats(day, ex)
    index = daily.build_index(day, pairs)
    result = daily.evaluate(day, pairs, ex, index, stats, text, tt)
    lists = None
    if result["passed"]:
        lists = daily.precompute(day, pairs, ex, index, text, tt, result)
        if publish:
            daily.publish(result, pairs, lists, stats)
    return {"result": result, "lists": lists, "pairs": pairs, "index": index, "ex": ex,
            "text": text, "tt": tt, "stats": stats}


def build_live_version(dsn: str, *, users: int = 120, items: int = 80,
                       events: int = 6000) -> dict:
    """Load synthetic data and publish the daily version of DAY; return its details."""
    from jobs.ingest.load import load_synthetic
    from jobs.ingest.synthetic import SyntheticConfig

    load_synthetic(SyntheticConfig(n_users=users, n_items=items, n_events=events,
                                   n_days=20), dsn=dsn)
    out = daily_steps(DAY)
    assert out["result"]["passed"], out["result"]
    return {"version": out["result"]["version"], "pairs": out["pairs"],
            "index": out["index"], "steps": out}


def make_live(dsn, tmp_path, monkeypatch):
    """Settings on a fresh database with a published version (no Spark); a generator for
    the ``live`` fixtures of this module and of test_hourly/test_freshness_dags."""
    for key, value in {"RECS_DATABASE_URL": dsn, "RECS_HOME": str(tmp_path / "home"),
                       "RECS_ALS_RANK": "8", "RECS_ALS_REG": "0.1", "RECS_TOP_K": "20",
                       "RECS_SIMILAR_K": "10", "RECS_GATE_MARGIN": "-1",
                       "RECS_TWO_TOWER_EPOCHS": "3", "RECS_RANKER_EPOCHS": "5"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings_mod, "_cached", None)
    info = build_live_version(dsn)
    yield {**info, "dsn": dsn}
    settings_mod._cached = None


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    yield from make_live(dsn, tmp_path, monkeypatch)


def sql(dsn: str, query: str, params=()):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else None


def post_events(dsn: str, events: list[tuple[int, int, str]],
                ts: dt.datetime | None = None) -> None:
    """Insert events as the reader does (ingested_at from the database clock)."""
    ts = ts or dt.datetime.now(dt.UTC)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s)", (ts.date(), ts.date()))
        for user, item, kind in events:
            cur.execute('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        '"timestamp") VALUES (nextval(\'interactions_event_id_seq\') + '
                        '1000000000, %s, %s, %s, %s)', (user, item, kind, ts))


def user_row(dsn: str, version: str, user: int):
    rows = sql(dsn, "SELECT items, reasons, computed_at FROM recommendations "
                    "WHERE model_version = %s AND user_id = %s", (version, user))
    return rows[0] if rows else None


def watermark(dsn: str):
    rows = sql(dsn, "SELECT value, model_version, details FROM pipeline_watermarks "
                    "WHERE name = 'nearline'")
    return rows[0] if rows else None


def other_category_items(dsn: str, user: int, n: int) -> list[int]:
    """Items of the category the user engaged with least, none consumed by the user."""
    rows = sql(dsn, """
        SELECT i.item_id FROM items i
        WHERE i.item_id NOT IN (SELECT item_id FROM interactions WHERE user_id = %s)
          AND i.category = (SELECT c.category FROM items c
                            LEFT JOIN interactions e ON e.item_id = c.item_id
                                                    AND e.user_id = %s
                            GROUP BY c.category ORDER BY count(e.item_id), c.category
                            LIMIT 1)
        ORDER BY i.item_id LIMIT %s""", (user, user, n))
    return [r[0] for r in rows]


def test_first_run_sets_the_watermark_and_changes_nothing(live):
    from jobs import nearline

    before = sql(live["dsn"], "SELECT user_id, items FROM recommendations ORDER BY user_id")
    out = nearline.run(dsn=live["dsn"])
    assert out["version"] == live["version"] and out["version_catch_up"] is True
    assert out["users_changed"] == 0  # no event after the version's data
    assert sql(live["dsn"], "SELECT user_id, items FROM recommendations "
                            "ORDER BY user_id") == before
    value, version, details = watermark(live["dsn"])
    assert version == live["version"] and details["users_changed"] == 0
    assert value.isoformat() == out["to"]


def test_new_events_fold_the_user_in_and_replace_the_list(live):
    from jobs import nearline
    from jobs.train_als import load_factors
    from models.als import solve_users
    from models.confidence import aggregate_pairs

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)
    user, other = sql(dsn, "SELECT user_id FROM recommendations ORDER BY user_id LIMIT 2")
    user, other = user[0], other[0]
    old_items, _, _ = user_row(dsn, version, user)
    other_before = user_row(dsn, version, other)
    fresh = other_category_items(dsn, user, 4)
    post_events(dsn, [(user, i, "purchase") for i in fresh])

    out = nearline.run(dsn=dsn)
    assert out["users_changed"] == 1 and out["users_updated"] == 1
    items, reasons, _ = user_row(dsn, version, user)
    assert items != old_items
    assert not set(fresh) & set(items)  # consumed items never come back
    # The list comes from the funnel the version published (here the full pipeline or
    # the generator the gate chose), so every item has a reason of the funnel's kinds,
    # and those naming an item name one of the user's (new events included).
    kinds = ("Because you watched ", "Similar to ", "Trending in ", "New in ",
             "Popular in ", "Recommended for you", "Trending now")
    assert all(r.startswith(kinds) for r in reasons), reasons
    assert user_row(dsn, version, other) == other_before  # untouched

    # The user's ALS vector: the solve on all the user's events (numpy reference).
    events = pd.DataFrame(sql(dsn, 'SELECT user_id, item_id, event_type, rating, "timestamp" '
                                   "FROM interactions WHERE user_id = %s "
                                   'ORDER BY user_id, item_id, "timestamp", event_id',
                              (user,)),
                          columns=["user_id", "item_id", "event_type", "rating", "timestamp"])
    pairs = aggregate_pairs(events)
    factors = load_factors(Path(live["pairs"]["als_dir"]) / "full")
    pos = {int(i): r for r, i in enumerate(factors.item_ids)}
    rows = np.array([pos[i] for i in pairs["item_id"] if i in pos])
    weights = np.array([w for i, w in zip(pairs["item_id"], pairs["weight"], strict=True)
                        if i in pos])
    s = settings_mod.get()
    want_vec = solve_users(factors.item_factors, [rows], [weights], s.als_reg, s.als_alpha)[0]
    stored = sql(dsn, "SELECT vector FROM embeddings WHERE entity_type = 'user' "
                      "AND entity_id = %s AND model_ver = %s", (user, f"als:{version}"))
    np.testing.assert_allclose(stored[0][0], want_vec, rtol=1e-4, atol=1e-5)
    named = [rid for rid in _reason_ids(dsn, version, user) if rid is not None and rid >= 0]
    assert set(named) <= set(pairs["item_id"].tolist())
    assert out["path"].startswith("funnel") and out["seconds_per_user"] > 0

    # Reference: the daily precompute's own code on the same data, i.e. the version's
    # training pairs with this user's pairs replaced by all the user's events, the user's
    # ALS vector the solve above, the published choice and the version's ranker.
    want = daily_list_for(live, pairs, user, want_vec, out["to"])
    got = [i for i, r in zip(items, reasons, strict=True) if not r.startswith("New in ")]
    assert got[:10] == [i for i in want if i in got][:10]
    assert got[:5] == want[:5]


def _reason_ids(dsn, version, user) -> list:
    return sql(dsn, "SELECT reason_item_ids FROM recommendations WHERE model_version = %s "
                    "AND user_id = %s", (version, user))[0][0]


def daily_list_for(live, pairs, user, vector, as_of) -> list[int]:
    """One user's list as jobs/precompute.py:run_funnel builds it, on the given data."""
    from jobs import daily
    from jobs.configs import funnel_config
    from jobs.precompute import load_rules
    from jobs.train_als import Factors
    from models.funnel import build_signals, rank_users
    from models.ranker import load as load_ranker
    from models.reasons import final_lists

    s = settings_mod.get()
    cfg = funnel_config(s)
    version = live["version"]
    (arts, model), = sql(live["dsn"], "SELECT artifacts, metrics->'published_model'->>'name' "
                                      "FROM model_runs WHERE model_version = %s", (version,))
    full = pd.read_parquet(arts["pairs"])
    full = pd.concat([full[full["user_id"] != user], pairs], ignore_index=True)
    full["timestamp"] = pd.to_datetime(full["timestamp"], utc=True)  # as nearline does
    items = pd.read_parquet(arts["items"])
    art = daily.fit_artifacts("full", arts["als"], arts["two_tower"], arts["covisit"],
                              arts["text"])
    art.als = Factors(np.array([user]), vector[None, :].astype("float32"),
                      art.als.item_ids, art.als.item_factors)
    prefs, countries = daily.user_context(arts.get("users"))
    sig = build_signals(full, items, art, as_of=pd.Timestamp(as_of), config=cfg,
                        users=np.array([user]), preferences=prefs, countries=countries)
    if model == "full_pipeline":
        ranked = rank_users(sig, np.arange(1), cfg, load_ranker(arts["ranker"]))
    else:
        ranked = rank_users(sig, np.arange(1), cfg, None, by=model,
                            keep=max(cfg.sizes.get(model), s.top_k))
    lists = final_lists(sig, ranked, items.set_index("item_id")["title"], s.top_k,
                        config=cfg.rerank, rules=load_rules(items))
    return [int(i) for i in lists["items"].iloc[0]]


def test_each_event_is_processed_exactly_once(live):
    from jobs import nearline

    dsn = live["dsn"]
    nearline.run(dsn=dsn)
    users = [r[0] for r in sql(dsn, "SELECT user_id FROM recommendations "
                                    "ORDER BY user_id LIMIT 3")]
    post_events(dsn, [(users[0], 1, "click"), (users[1], 2, "view")])
    first = nearline.run(dsn=dsn)
    assert first["users_changed"] == 2
    again = nearline.run(dsn=dsn)
    assert again["users_changed"] == 0 and again["from"] == first["to"]
    post_events(dsn, [(users[2], 3, "click")])
    third = nearline.run(dsn=dsn)
    assert third["users_changed"] == 1 and third["from"] == again["to"]


def test_an_event_in_an_open_transaction_is_not_missed(live):
    """The watermark stops before the oldest writing transaction, so an event whose
    transaction commits after the run is read by the next run."""
    from jobs import nearline

    dsn = live["dsn"]
    nearline.run(dsn=dsn)
    user = sql(dsn, "SELECT min(user_id) FROM recommendations")[0][0]
    post_events(dsn, [])  # the day's partition
    slow = psycopg2.connect(dsn)
    try:
        with slow.cursor() as cur:
            cur.execute('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        '"timestamp") VALUES (2000000001, %s, 5, \'view\', now())', (user,))
        post_events(dsn, [(user + 1, 6, "view")])  # committed, but after the open one
        out = nearline.run(dsn=dsn)
        assert out["users_changed"] == 0  # both wait: the cut is before the open transaction
        slow.commit()
    finally:
        slow.close()
    out = nearline.run(dsn=dsn)
    assert out["users_changed"] == 2


def test_a_failed_run_leaves_old_lists_and_watermark(live, monkeypatch):
    from jobs import nearline

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)
    user = sql(dsn, "SELECT min(user_id) FROM recommendations")[0][0]
    before_row, before_wm = user_row(dsn, version, user), watermark(dsn)
    post_events(dsn, [(user, i, "purchase") for i in other_category_items(dsn, user, 3)])

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(nearline, "_upsert_user_vectors", boom)  # after the lists were written
        with pytest.raises(RuntimeError, match="disk full"):
            nearline.run(dsn=dsn)
    assert user_row(dsn, version, user) == before_row
    assert watermark(dsn) == before_wm
    out = nearline.run(dsn=dsn)  # the next run reads the same events
    assert out["users_changed"] == 1 and out["users_updated"] == 1
    assert user_row(dsn, version, user)[0] != before_row[0]


def test_a_new_version_catches_up_users_its_lists_have_not_seen(live):
    from jobs import nearline

    dsn = live["dsn"]
    nearline.run(dsn=dsn)
    users = [r[0] for r in sql(dsn, "SELECT user_id FROM recommendations "
                                    "ORDER BY user_id LIMIT 2")]
    post_events(dsn, [(users[0], 1, "click"), (users[1], 2, "click")])
    assert nearline.run(dsn=dsn)["users_changed"] == 2
    # As if a daily publish had switched versions: its lists lack those events.
    sql(dsn, "UPDATE pipeline_watermarks SET model_version = 'v-older' "
             "WHERE name = 'nearline'")
    out = nearline.run(dsn=dsn)
    assert out["version_catch_up"] is True and out["users_changed"] == 2


def test_new_in_slots_survive_a_nearline_rewrite(live):
    from jobs import nearline

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)
    user = sql(dsn, "SELECT min(user_id) FROM recommendations")[0][0]
    items, _, _ = user_row(dsn, version, user)
    new_item = 999_001
    sql(dsn, "INSERT INTO items (item_id, title, category) VALUES (%s, 'Brand New', 'drama')",
        (new_item,))
    sql(dsn, """UPDATE recommendations SET items[5] = %s, reasons[5] = 'New in drama',
                reason_item_ids[5] = -1 WHERE model_version = %s AND user_id = %s""",
        (new_item, version, user))
    post_events(dsn, [(user, i, "view") for i in other_category_items(dsn, user, 2)])
    nearline.run(dsn=dsn)
    after, reasons, _ = user_row(dsn, version, user)
    assert after[4] == new_item and reasons[4] == "New in drama"
    assert len(after) == len(items)


def test_splice_keeps_one_copy_and_the_length():
    from jobs.nearline import splice

    items, scores, reasons, rids = [1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0], list("abcd"), [0] * 4
    splice(items, scores, reasons, rids, 1, (3, 9.0, "x", -1), keep=4)
    assert items == [1, 3, 2, 4] and scores == [4.0, 9.0, 3.0, 1.0]
    assert reasons == ["a", "x", "b", "d"] and rids == [0, -1, 0, 0]
    splice(items, scores, reasons, None, 10, (7, 0.5, "y", None), keep=4)
    assert items == [1, 3, 2, 4]  # appended past the end, then cut


# --- chunks ------------------------------------------------------------------------------

def _five_users_with_events(dsn: str) -> list[int]:
    users = [r[0] for r in sql(dsn, "SELECT user_id FROM recommendations "
                                    "ORDER BY user_id LIMIT 5")]
    post_events(dsn, [(u, i, "purchase") for u in users
                      for i in other_category_items(dsn, u, 2)])
    return users


def _lists(dsn: str, version: str, users: list[int]) -> dict:
    return {r[0]: r[1:] for r in sql(
        dsn, "SELECT user_id, items, scores, reasons, reason_item_ids, history_tail, "
             "computed_at FROM recommendations WHERE model_version = %s "
             "AND user_id = ANY(%s) ORDER BY user_id", (version, users))}


def test_users_go_in_chunks_each_committed_with_its_progress(live):
    from jobs import nearline

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)
    users = _five_users_with_events(dsn)
    out = nearline.run(dsn=dsn, chunk_users=2)
    assert (out["users_changed"], out["users_updated"], out["chunks"]) == (5, 5, 3)
    assert watermark(dsn)[2].get("pending") is None

    # A run whose budget is spent stops after one chunk; each commit is visible and the
    # next run resumes after the last user done, until the window is complete.
    before = watermark(dsn)
    _five_users_with_events(dsn)
    done: list[int] = []
    for k, expect in enumerate(([users[0], users[1]], [users[2], users[3]], [users[4]])):
        stamps = {u: row[-1] for u, row in _lists(dsn, version, users).items()}
        out = nearline.run(dsn=dsn, chunk_users=2, budget_s=0)
        assert out["chunks"] == 1 and out["users_updated"] == len(expect)
        assert out["users_left"] == 5 - len(done) - len(expect)
        assert out["resumed_after_user"] == (done[-1] if done else None)
        changed = [u for u, row in _lists(dsn, version, users).items() if row[-1] != stamps[u]]
        assert changed == expect, k
        done += expect
        value, wm_version, details = watermark(dsn)
        if k < 2:
            # The watermark's value stays at the window's start until the window is done.
            assert value == before[0] and details["pending"]["last_user"] == done[-1]
            assert details["pending"]["to"] == out["to"]
        else:
            assert "pending" not in details and value.isoformat() == out["to"]
    assert nearline.run(dsn=dsn)["users_changed"] == 0


def test_a_run_killed_in_a_chunk_loses_nothing_and_repeats_nothing(live):
    """SIGKILL of `python -m jobs.nearline` while its second chunk waits for a row lock
    the test holds: the first chunk stays committed, the next run does the rest, and the
    lists equal those of one uninterrupted run over the same window."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from core.settings import PROJECT_ROOT
    from jobs import nearline

    dsn, version = live["dsn"], live["version"]
    nearline.run(dsn=dsn)
    start_wm = watermark(dsn)
    users = _five_users_with_events(dsn)
    before = _lists(dsn, version, users)
    until = dt.datetime.now(dt.UTC)
    holder = psycopg2.connect(dsn)
    with holder.cursor() as cur:  # the second chunk (users[2], users[3]) must update this
        cur.execute("SELECT 1 FROM recommendations WHERE model_version = %s "
                    "AND user_id = %s FOR UPDATE", (version, users[2]))
    env = {**os.environ, "RECS_NEARLINE_CHUNK_USERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.nearline", "--until",
                             until.isoformat()], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        blocked = []
        while not blocked:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the nearline run never reached chunk 2"
            blocked = sql(dsn, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = "
                               "'Lock' AND query LIKE 'INSERT INTO %%recommendations%%'")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.rollback()
        holder.close()
    # The killed run's backend ends once it finds its client gone (its chunk rolled back).
    deadline = time.monotonic() + 60
    while sql(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (blocked[0][0],)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    value, wm_version, details = watermark(dsn)
    pending = details["pending"]
    assert value == start_wm[0] and wm_version == start_wm[1]
    assert pending["last_user"] == users[1] and pending["version"] == version
    after_kill = _lists(dsn, version, users)
    assert [u for u in users if after_kill[u][-1] != before[u][-1]] == users[:2]

    out = nearline.run(dsn=dsn, chunk_users=2)
    assert out["resumed_after_user"] == users[1]
    assert (out["users_changed"], out["users_updated"], out["chunks"]) == (3, 3, 2)
    assert out["to"] == pending["to"]
    resumed = _lists(dsn, version, users)
    # Each user refreshed exactly once: the first two by the killed run only.
    assert all(resumed[u][-1] == after_kill[u][-1] for u in users[:2])
    assert all(resumed[u][-1] != before[u][-1] for u in users[2:])
    value, _, details = watermark(dsn)
    assert "pending" not in details and value.isoformat() == pending["to"]

    # The same window in one uninterrupted run, from the same start, gives the same lists.
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE pipeline_watermarks SET value = %s, model_version = %s, "
                    "details = '{}' WHERE name = 'nearline'", start_wm[:2])
        for u, row in before.items():
            cur.execute("UPDATE recommendations SET items = %s, scores = %s, reasons = %s, "
                        "reason_item_ids = %s, history_tail = %s, computed_at = %s "
                        "WHERE model_version = %s AND user_id = %s", (*row, version, u))
    whole = nearline.run(dsn=dsn, until=dt.datetime.fromisoformat(pending["to"]),
                         chunk_users=100)
    assert (whole["users_changed"], whole["chunks"]) == (5, 1) and whole["to"] == out["to"]
    once = _lists(dsn, version, users)
    for u in users:
        assert once[u][0] == resumed[u][0] and once[u][2] == resumed[u][2], u
        np.testing.assert_allclose(once[u][1], resumed[u][1], rtol=1e-5)
