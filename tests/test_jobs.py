"""Batch steps on real Postgres: extract, item statistics, publish checks and switch."""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import db
from core import settings as settings_mod
from jobs import extract, publish
from jobs.item_stats import build_lists
from models import popularity as pop
from models.confidence import aggregate_pairs, sublinear

DAY = dt.date(2026, 3, 10)


def _load_events(dsn: str) -> None:
    with db.transaction(dsn) as cur:
        cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s)",
                    (DAY - dt.timedelta(days=3), DAY + dt.timedelta(days=2)))
        cur.execute("INSERT INTO items (item_id, title, category) VALUES "
                    "(1, 'One', 'a'), (2, 'Two', 'a'), (3, 'Three', 'b')")
        cur.execute("INSERT INTO users (user_id, country) VALUES (10, 'US'), (11, 'FR')")
        rows = [(1, 10, 1, "view", None, "2026-03-08T10:00:00Z"),
                (2, 10, 2, "rating", 4.0, "2026-03-09T10:00:00Z"),
                (3, 11, 1, "click", None, "2026-03-10T23:59:59Z"),
                (4, 11, 3, "purchase", None, "2026-03-11T00:00:00Z")]  # after the day
        cur.executemany('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        'rating, "timestamp") VALUES (%s, %s, %s, %s, %s, %s)', rows)


def test_extract_takes_the_window_of_the_day_and_is_idempotent(settings):
    _load_events(settings.dsn)
    first = extract.run(DAY)
    events = extract.read_events(first["events"])
    assert list(events["event_id"]) == [1, 2, 3]  # ordered by user, item, time
    assert first["data_until"].startswith("2026-03-10T23:59:59")
    again = extract.run(DAY)
    assert extract.read_events(again["events"]).equals(events)
    assert set(pd.read_parquet(first["users"])["country"]) == {"US", "FR"}
    # Partitions are created a week ahead.
    with db.transaction(settings.dsn) as cur:
        cur.execute("SELECT to_regclass('interactions_p20260317') IS NOT NULL")
        assert cur.fetchone()[0]


def _insert(dsn: str, rows) -> None:
    with db.transaction(dsn) as cur:
        cur.executemany('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        'rating, "timestamp") VALUES (%s, %s, %s, %s, %s, %s)', rows)


def _all_events(dsn: str, end: str) -> list[int]:
    with db.transaction(dsn) as cur:
        cur.execute('SELECT event_id FROM interactions WHERE "timestamp" < %s '
                    'ORDER BY "timestamp"::date, user_id, item_id, "timestamp", event_id',
                    (end,))
        return [r[0] for r in cur.fetchall()]


def test_extract_reads_the_closed_day_and_late_events_only(settings):
    """Each run extracts its own day; older days come from the lake unless they received
    events since the previous run, and the window always equals a query of the table.
    (No margin for transactions still open at the watermark: this test commits each
    insert before the next run starts.)"""
    _load_events(settings.dsn)
    run = functools.partial(extract.run, late_margin=dt.timedelta(0))
    first = run(DAY)  # first run: every day before the end of DAY
    assert set(first["extracted_days"]) == {"2026-03-08", "2026-03-09", "2026-03-10"}
    nxt = DAY + dt.timedelta(days=1)
    second = run(nxt)
    assert second["extracted_days"] == {"2026-03-11": 1}  # the closed day only
    assert list(extract.read_events(second["events"])["event_id"]) == \
        _all_events(settings.dsn, "2026-03-12")
    assert second["n_events"] == 4 and second["data_until"].startswith("2026-03-11T00:00:00")

    # A late event for 03-09 (and one for the next, not yet closed, day) arrive.
    _insert(settings.dsn, [(5, 12, 2, "view", None, "2026-03-09T12:00:00Z"),
                           (6, 12, 3, "view", None, "2026-03-12T08:00:00Z")])
    again = run(nxt)
    assert set(again["extracted_days"]) == {"2026-03-09", "2026-03-11"}
    assert list(extract.read_events(again["events"])["event_id"]) == \
        _all_events(settings.dsn, "2026-03-12")
    assert 6 not in set(extract.read_events(again["events"])["event_id"])

    # A re-run of an older date finds late events of days after it that are in the lake.
    _insert(settings.dsn, [(7, 12, 1, "view", None, "2026-03-11T09:00:00Z")])
    old = run(DAY)
    assert set(old["extracted_days"]) == {"2026-03-10", "2026-03-11"}
    assert list(extract.read_events(extract.window_files(nxt, 0, None))["event_id"]) == \
        _all_events(settings.dsn, "2026-03-12")


def test_extract_window_and_widening_it(settings):
    """A window of one day reads one day file; widening it later extracts the older days
    the lake never had."""
    _load_events(settings.dsn)
    one = extract.run(DAY, window_days=1)
    assert set(one["extracted_days"]) == {"2026-03-10"}
    assert list(extract.read_events(one["events"])["event_id"]) == [3]
    wide = extract.run(DAY, window_days=0)
    assert set(wide["extracted_days"]) == {"2026-03-08", "2026-03-09", "2026-03-10"}
    assert list(extract.read_events(wide["events"])["event_id"]) == [1, 2, 3]


def test_pair_weights_follow_type_and_rating_and_grow_sublinearly():
    events = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [5, 5, 6, 5],
                           "event_type": ["view", "purchase", "rating", "click"],
                           "rating": [None, None, 2.5, None],
                           "timestamp": pd.to_datetime([1, 2, 3, 4], unit="s", utc=True)})
    pairs = aggregate_pairs(events).set_index(["user_id", "item_id"])["weight"]
    assert pairs[(1, 5)] == pytest.approx(1 + np.log(2.0 + 4.0))  # view 2 + purchase 4
    assert pairs[(1, 6)] == pytest.approx(0.5)  # rating 2.5 of 5
    assert pairs[(2, 5)] == pytest.approx(1.0)
    assert list(sublinear(np.array([0.2, 1.0, np.e]))) == pytest.approx([0.2, 1.0, 2.0])


def test_popularity_decays_and_trending_rewards_growth():
    as_of = pd.Timestamp("2026-03-31", tz="UTC")
    ts = pd.to_datetime(["2026-03-30", "2026-03-30", "2026-03-30", "2026-02-20",
                         "2026-02-21", "2026-02-22", "2026-02-23"], utc=True)
    events = pd.DataFrame({"user_id": range(7), "item_id": [1, 1, 1, 2, 2, 2, 2],
                           "timestamp": ts})
    popular = pop.popularity(events, as_of, half_life_days=30)
    assert popular.index[0] == 1  # three recent beat four old
    assert popular[2] == pytest.approx(sum(0.5 ** (d / 30) for d in (39, 38, 37, 36)))
    trend = pop.trending(events, as_of, recent_days=7, baseline_days=28)
    assert list(trend.index) == [1]


def test_lists_cover_categories_and_countries():
    events = pd.DataFrame({"user_id": np.repeat(np.arange(12), 2),
                           "item_id": np.tile([1, 2], 12),
                           "timestamp": pd.Timestamp("2026-03-01", tz="UTC")})
    items = pd.DataFrame({"item_id": [1, 2], "category": ["a", "b"]})
    users = pd.DataFrame({"user_id": range(12), "country": ["US"] * 6 + ["FR"] * 3 + [None] * 3})
    lists = build_lists(events, items, pd.Timestamp("2026-03-02", tz="UTC"), 10, 7, users)
    names = set(lists["list_name"])
    assert names == {"popular", "trending", "trending:category:a", "trending:category:b",
                     "trending:country:US"}  # FR has fewer than 5 users
    assert set(lists.loc[lists.list_name == "trending:country:US", "reason"]) == {
        "Popular in US"}


def _frames(users=(10, 11), items=((1, 2), (3, 1))):
    recs = pd.DataFrame({"user_id": list(users),
                         "items": [np.array(i, dtype="int64") for i in items],
                         "scores": [np.array([0.9, 0.8][:len(i)], dtype="float32")
                                    for i in items],
                         "reasons": [["Because you watched X"] * len(i) for i in items],
                         "reason_item_ids": [np.array([7] * len(i), dtype="int64")
                                             for i in items],
                         "history_tail": [np.array([7], dtype="int64")] * len(users)})
    sims = pd.DataFrame({"item_id": [1, 2], "items": [np.array([2]), np.array([1])],
                         "scores": [np.array([0.5], dtype="float32")] * 2,
                         "reasons": [["Similar to One"], ["Similar to Two"]]})
    pairs = pd.DataFrame({"user_id": [10, 11], "item_id": [7, 7]})
    return recs, sims, pairs


def test_validate_rejects_duplicates_consumed_items_and_low_coverage():
    recs, sims, pairs = _frames()
    assert publish.validate(recs, sims, pairs)["coverage"] == 1.0
    dup, _, _ = _frames(items=((1, 1), (3, 1)))
    with pytest.raises(publish.PublishError, match="duplicate"):
        publish.validate(dup, sims, pairs)
    leaked, _, _ = _frames(items=((1, 7), (3, 1)))
    with pytest.raises(publish.PublishError, match="consumed"):
        publish.validate(leaked, sims, pairs)
    with pytest.raises(publish.PublishError, match="coverage"):
        publish.validate(recs.iloc[:1], sims, pairs)


def _stage(tmp_path, version: str, dsn: str, items=((1, 2), (3, 1)),
           logical_date: dt.date | None = None):
    recs, sims, pairs = _frames(items=items)
    d = tmp_path / version
    d.mkdir(exist_ok=True)
    recs.to_parquet(d / "recs.parquet")
    sims.to_parquet(d / "sims.parquet")
    pairs.to_parquet(d / "pairs.parquet")
    pd.DataFrame({"list_name": ["popular", "popular"], "rank": [1, 2], "item_id": [1, 2],
                  "score": [2.0, 1.0], "reason": ["Popular right now"] * 2}
                 ).to_parquet(d / "trending.parquet")
    pd.DataFrame({"item_id": [1, 2], "popularity": [2.0, 1.0]}).to_parquet(d / "pop.parquet")
    with db.transaction(dsn) as cur:
        cur.execute("INSERT INTO model_runs (model_version, status, metrics, logical_date) "
                    "VALUES (%s, 'evaluated', %s, %s) ON CONFLICT (model_version) DO NOTHING",
                    (version, json.dumps({}), logical_date))
    return dict(lists={"recommendations": str(d / "recs.parquet"),
                       "similar": str(d / "sims.parquet")},
                trending_path=str(d / "trending.parquet"),
                popularity_path=str(d / "pop.parquet"), pairs_path=str(d / "pairs.parquet"))


def _partitions(dsn: str, table: str) -> list[str]:
    with db.transaction(dsn) as cur:
        cur.execute("""SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = %s::regclass ORDER BY 1""", (table,))
        return [r[0] for r in cur.fetchall()]


def test_publish_switches_keeps_the_previous_version_and_retires_older(settings, tmp_path):
    dsn = settings.dsn
    with db.transaction(dsn) as cur:
        cur.execute("INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two')")
    for v in ("v1", "v2"):
        publish.run(v, dsn=dsn, lake_root=tmp_path / "lake", **_stage(tmp_path, v, dsn))
    with db.transaction(dsn) as cur:
        cur.execute("SELECT live_version, previous_version FROM serving_state")
        assert cur.fetchone() == ("v2", "v1")
        cur.execute("SELECT user_id, item_id, rank, reason FROM live_recommendations "
                    "ORDER BY user_id, rank")
        assert cur.fetchall() == [(10, 1, 1, "Because you watched X"),
                                  (10, 2, 2, "Because you watched X"),
                                  (11, 3, 1, "Because you watched X"),
                                  (11, 1, 2, "Because you watched X")]
        cur.execute("SELECT popularity FROM items ORDER BY item_id")
        assert [r[0] for r in cur.fetchall()] == [2.0, 1.0]
    # Re-publishing the live version replaces its partitions in place; nearline and
    # hourly, which had caught up with it, treat it as a new version.
    with db.transaction(dsn) as cur:
        cur.execute("INSERT INTO pipeline_watermarks (name, value, model_version, details) "
                    "VALUES ('nearline', now(), 'v2', '{\"pending\": {\"version\": \"v2\"}}'), "
                    "('hourly', now(), 'v2', '{}')")
    publish.run("v2", dsn=dsn, lake_root=tmp_path / "lake",
                **_stage(tmp_path, "v2b", dsn, items=((2, 1), (1, 3))) | {})
    assert _partitions(dsn, "recommendations").count("FOR VALUES IN ('v2')") == 1
    assert _sql(dsn, "SELECT name, model_version, details FROM pipeline_watermarks "
                     "ORDER BY 1") == [("hourly", None, {}), ("nearline", None, {})]
    assert _sql(dsn, "SELECT items FROM recommendations WHERE model_version = 'v2' "
                     "ORDER BY user_id") == [([2, 1],), ([1, 3],)]
    publish.run("v3", dsn=dsn, lake_root=tmp_path / "lake", **_stage(tmp_path, "v3", dsn))
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('v2')",
                                                   "FOR VALUES IN ('v3')"]
    with db.transaction(dsn) as cur:
        cur.execute("SELECT model_version, status FROM model_runs ORDER BY 1")
        assert cur.fetchall() == [("v1", "retired"), ("v2", "published"), ("v2b", "evaluated"),
                                  ("v3", "published")]
    snapshot = json.loads((tmp_path / "lake" / "serving" / "popular.json").read_text())
    assert snapshot["model_version"] == "v3" and snapshot["items"][0]["item_id"] == 1


def _many_lists(tmp_path, n_users: int, files: int) -> tuple[Path, pd.DataFrame]:
    """Seeded lists of ``n_users`` users as a folder of ``files`` Parquet part files
    (the Spark funnel's output shape), and their pairs."""
    rng = np.random.default_rng(5)
    users = np.arange(100, 100 + n_users)
    items = [rng.choice(np.arange(1, 60), 5, replace=False) for _ in users]
    recs = pd.DataFrame({"user_id": users, "items": items,
                         "scores": [np.linspace(1, 0.5, 5).astype("float32")] * n_users,
                         "reasons": [["Because you watched X"] * 5] * n_users,
                         "reason_item_ids": [np.array([70] * 5, dtype="int64")] * n_users,
                         "history_tail": [np.array([70], dtype="int64")] * n_users})
    folder = tmp_path / "lists_many"
    folder.mkdir()
    for k, part in enumerate(np.array_split(np.arange(n_users), files)):
        recs.iloc[part].to_parquet(folder / f"part-{k:05d}.parquet", row_group_size=300)
    (folder / "_SUCCESS").write_text("")
    return folder, pd.DataFrame({"user_id": users, "item_id": 70})


def test_parallel_publish_streams_into_hash_sub_partitions_the_same_rows(
        settings, tmp_path, monkeypatch):
    """Above RECS_PUBLISH_PARALLEL_MIN_ROWS the recommendations go over several COPY
    connections into a hash-partitioned staged table: the live lists are those of a
    one-stream publish of the same lake lists, a blocked item leaves every list, and a
    publish that fails after the streams leaves nothing staged."""
    dsn = settings.dsn
    _sql(dsn, "INSERT INTO items (item_id, title) SELECT g, 'I' || g FROM "
              "generate_series(1, 70) g")
    folder, pairs = _many_lists(tmp_path, 2_000, files=3)
    args = _stage(tmp_path, "one", dsn, logical_date=DAY)
    pairs.to_parquet(args["pairs_path"])
    args["lists"]["recommendations"] = str(folder)
    one = publish.run("one", dsn=dsn, lake_root=tmp_path / "lake", **args)
    assert one["copy_streams"] == 1 and one["rows"]["recommendations"] == 2_000
    expected = _sql(dsn, "SELECT user_id, items, scores, reasons FROM recommendations "
                         "WHERE model_version = 'one' ORDER BY user_id")

    monkeypatch.setenv("RECS_PUBLISH_STREAMS", "3")
    monkeypatch.setenv("RECS_PUBLISH_PARALLEL_MIN_ROWS", "1000")
    monkeypatch.setattr(settings_mod, "_cached", None)
    args2 = _stage(tmp_path, "many", dsn, logical_date=DAY + dt.timedelta(days=1))
    pairs.to_parquet(args2["pairs_path"])
    args2["lists"]["recommendations"] = str(folder)
    out = publish.run("many", dsn=dsn, lake_root=tmp_path / "lake", **args2)
    assert out["copy_streams"] == 3 and out["rows"]["recommendations"] == 2_000
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("many",)]
    assert _sql(dsn, "SELECT user_id, items, scores, reasons FROM recommendations "
                     "WHERE model_version = 'many' ORDER BY user_id") == expected
    # Each stream's rows landed in the hash sub-partitions of the version's partition.
    subs = _sql(dsn, """SELECT c.relname FROM pg_inherits i
                        JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r'
                        JOIN pg_class p ON p.oid = i.inhparent
                        WHERE p.relname LIKE 'recommendations_many%%' ORDER BY 1""")
    counts = [_sql(dsn, f"SELECT count(*) FROM {name}")[0][0] for (name,) in subs]
    assert len(counts) == 3 and min(counts) > 0 and sum(counts) == 2_000, counts
    assert _staged_tables(dsn) == []

    # A blocked item leaves every list; a bad row, refused by the database in one
    # stream, fails the publish and leaves nothing staged.
    _sql(dsn, "INSERT INTO rerank_rules (kind, value) VALUES ('block_item', '7')")
    bad = pd.read_parquet(folder / "part-00002.parquet")
    bad.at[bad.index[3], "reasons"] = ["Because \x00 X"] * 5
    bad.to_parquet(folder / "part-00002.parquet", row_group_size=300)
    args3 = _stage(tmp_path, "bad", dsn, logical_date=DAY + dt.timedelta(days=2))
    pairs.to_parquet(args3["pairs_path"])
    args3["lists"]["recommendations"] = str(folder)
    with pytest.raises(Exception, match="0x00"):
        publish.run("bad", dsn=dsn, lake_root=tmp_path / "lake", **args3)
    assert _staged_tables(dsn) == []
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("many",)]
    bad.at[bad.index[3], "reasons"] = ["Because you watched X"] * 5
    bad.to_parquet(folder / "part-00002.parquet", row_group_size=300)
    out = publish.run("bad", dsn=dsn, lake_root=tmp_path / "lake", **args3)
    assert out["checks"]["blocked_removed"]["recommendations"] > 0
    assert _sql(dsn, "SELECT count(*) FROM recommendations WHERE model_version = 'bad' "
                     "AND 7 = ANY(items)") == [(0,)]


def test_publish_refuses_a_version_that_did_not_pass_the_gate(settings, tmp_path):
    args = _stage(tmp_path, "v9", settings.dsn)
    with db.transaction(settings.dsn) as cur:
        cur.execute("UPDATE model_runs SET status = 'rejected' WHERE model_version = 'v9'")
    with pytest.raises(publish.PublishError, match="rejected"):
        publish.run("v9", dsn=settings.dsn, lake_root=tmp_path / "lake", **args)
    with db.transaction(settings.dsn) as cur:
        cur.execute("SELECT live_version FROM serving_state")
        assert cur.fetchone()[0] is None
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'recommendations_v9%'")
        assert cur.fetchone()[0] == 0


def _sql(dsn: str, query: str, params=()):
    with db.transaction(dsn) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else None


def _staged_tables(dsn: str) -> list[str]:
    """Tables of the list tables' shape that are no partition (what a publish stages)."""
    return [r[0] for r in _sql(dsn, """
        SELECT c.relname FROM pg_class c
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname ~ '^(recommendations|similar_items|trending)_'""")]


def test_a_backfill_of_older_dates_neither_goes_live_nor_retires_the_live_version(
        settings, tmp_path):
    dsn = settings.dsn
    day = dt.date(2026, 10, 31)
    _sql(dsn, "INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two'), (3, 'Tri')")
    publish.run("vD", dsn=dsn, lake_root=tmp_path / "lake", keep=2,
                **_stage(tmp_path, "vD", dsn, items=((1, 2), (3, 1)), logical_date=day))
    # Backfill D-2, then D-1 (their lists differ from D's).
    for n, v in ((2, "vDm2"), (1, "vDm1")):
        out = publish.run(v, dsn=dsn, lake_root=tmp_path / "lake", keep=2,
                          **_stage(tmp_path, v, dsn, items=((2, 3), (2, 3)),
                                   logical_date=day - dt.timedelta(days=n)))
        assert _sql(dsn, "SELECT live_version FROM serving_state") == [("vD",)]
        assert out["live"] is False and "backfill" in out["message"]
    assert _sql(dsn, "SELECT user_id, array_agg(item_id ORDER BY rank) FROM "
                     "live_recommendations GROUP BY 1 ORDER BY 1") == [(10, [1, 2]), (11, [3, 1])]
    assert _sql(dsn, "SELECT model_version, status, message LIKE 'not live: a backfill%%' "
                     "FROM model_runs ORDER BY 1") == [
        ("vD", "published", None), ("vDm1", "evaluated", True), ("vDm2", "evaluated", True)]
    # Nothing of the backfills was loaded, nothing staged is left, D keeps its lists.
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('vD')"]
    assert _staged_tables(dsn) == []
    snapshot = json.loads((tmp_path / "lake" / "serving" / "popular.json").read_text())
    assert snapshot["model_version"] == "vD"
    # Retirement goes by logical date: a newer date published later still switches and
    # keeps D as the previous version.
    publish.run("vDp1", dsn=dsn, lake_root=tmp_path / "lake", keep=2,
                **_stage(tmp_path, "vDp1", dsn, logical_date=day + dt.timedelta(days=1)))
    assert _sql(dsn, "SELECT live_version, previous_version FROM serving_state") == [
        ("vDp1", "vD")]


def test_retirement_keeps_the_newest_logical_dates_not_the_newest_publishes(
        settings, tmp_path):
    dsn = settings.dsn
    day = dt.date(2026, 10, 31)
    _sql(dsn, "INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two'), (3, 'Tri')")
    for v, n in (("vA", 0), ("vB", 1), ("vC", 2)):
        publish.run(v, dsn=dsn, lake_root=tmp_path / "lake", keep=2,
                    **_stage(tmp_path, v, dsn, logical_date=day + dt.timedelta(days=n)))
    # vA was retired by vC's publish; re-running vB (older than the live vC) changes
    # nothing, and vB stays as the previous version.
    assert _sql(dsn, "SELECT model_version, status FROM model_runs ORDER BY 1") == [
        ("vA", "retired"), ("vB", "published"), ("vC", "published")]
    publish.run("vB", dsn=dsn, lake_root=tmp_path / "lake", keep=2,
                **_stage(tmp_path, "vB", dsn, logical_date=day + dt.timedelta(days=1)))
    assert _sql(dsn, "SELECT live_version, previous_version FROM serving_state") == [
        ("vC", "vB")]
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('vB')",
                                                   "FOR VALUES IN ('vC')"]


def test_a_publish_that_fails_mid_copy_leaves_nothing_staged(settings, tmp_path):
    dsn = settings.dsn
    _sql(dsn, "INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two'), (3, 'Tri')")
    publish.run("v1", dsn=dsn, lake_root=tmp_path / "lake",
                **_stage(tmp_path, "v1", dsn, logical_date=DAY))
    args = _stage(tmp_path, "v2", dsn, logical_date=DAY + dt.timedelta(days=1))
    # Bad data that only the database refuses, in the second table's COPY: a NUL byte
    # in a similar list's reason.
    sims = pd.read_parquet(args["lists"]["similar"])
    sims.at[1, "reasons"] = ["Similar to \x00Two"]
    sims.to_parquet(args["lists"]["similar"])
    with pytest.raises(Exception, match="0x00"):
        publish.run("v2", dsn=dsn, lake_root=tmp_path / "lake", **args)
    assert _staged_tables(dsn) == []
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('v1')"]
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("v1",)]
    # A switch that cannot take its locks gives up within its budget, leaving nothing.
    args = _stage(tmp_path, "v2", dsn, logical_date=DAY + dt.timedelta(days=1))
    holder = db.connect(dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE serving_state IN SHARE MODE")  # as a stuck writer
            with pytest.raises(publish.PublishError, match="could not take its locks"):
                publish.run("v2", dsn=dsn, lake_root=tmp_path / "lake", lock_timeout_ms=100,
                            switch_budget_s=1.0, **args)
    finally:
        holder.close()
    assert _staged_tables(dsn) == []
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("v1",)]
    publish.run("v2", dsn=dsn, lake_root=tmp_path / "lake", **args)
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("v2",)]
    assert _staged_tables(dsn) == []
