"""prepare and item_stats summed in Spark over the lake give what pandas gives.

Real Spark (``local[2]``) against the pandas path on the same day files: the same pairs
(weights to rounding), the same split and the same lists, countries included; and the
daily step picks the engine from the window's size.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import settings as settings_mod
from jobs import daily, item_stats, prepare
from jobs.extract import EVENT_SCHEMA
from jobs.ingest.synthetic import SyntheticConfig, generate_items, generate_users, iter_events

DAY = dt.date(2026, 10, 31)
AS_OF = "2026-11-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """Day files of a synthetic window, with the awkward cases added: repeated pairs
    (sublinear weights), ratings, unrated events, an event after the window's end (a
    negative age) and a country with fewer than MIN_COUNTRY_USERS users."""
    root = tmp_path_factory.mktemp("aggregates")
    cfg = SyntheticConfig(n_users=300, n_items=200, n_events=20_000, seed=3)
    ev = pd.concat(list(iter_events(cfg)), ignore_index=True)
    repeats = ev.sample(2_000, random_state=1).assign(event_type="view", rating=np.nan)
    ev = pd.concat([ev, repeats, pd.DataFrame({
        "event_id": [1, 2], "user_id": [5, 6], "item_id": [7, 7],
        "event_type": ["purchase", "rating"], "rating": [np.nan, 4.5],
        "ts": [int(pd.Timestamp("2026-11-01T06:00", tz="UTC").timestamp())] * 2})],
        ignore_index=True)
    ev["timestamp"] = pd.to_datetime(ev["ts"], unit="s", utc=True)
    ev["rating"] = ev["rating"].astype("float32")
    files = []
    for day, part in ev.groupby(ev["timestamp"].dt.date):
        path = root / f"events-{day}.parquet"
        pq.write_table(pa.Table.from_pandas(part[EVENT_SCHEMA.names], schema=EVENT_SCHEMA,
                                            preserve_index=False), path)
        files.append(str(path))
    users = generate_users(cfg)[["user_id", "country"]]
    users.loc[users["user_id"] <= 3, "country"] = "ZZ"  # three users: no list of its own
    users.loc[users["user_id"] == 4, "country"] = None
    users_path = root / "users.parquet"
    users.to_parquet(users_path, index=False)
    items_path = root / "items.parquet"
    generate_items(cfg)[["item_id", "category"]].to_parquet(items_path, index=False)
    return {"root": root, "files": files, "users": str(users_path),
            "items": str(items_path), "n_events": len(ev)}


def test_spark_pairs_and_split_equal_the_pandas_ones(window):
    out = {}
    for engine in ("pandas", "spark"):
        run = prepare.run(DAY, window["files"], holdout=0.25, seed=42, engine=engine,
                          lake_root=window["root"] / engine, spark_master="local[2]")
        out[engine] = {name: pd.read_parquet(run[name]) for name in ("full", "train", "test")}
        assert run["engine"] == engine
        assert sorted(p.name for p in (window["root"] / engine / "pairs").rglob("*")
                      if p.is_file()) == ["full.parquet", "test.parquet", "train.parquet"]
    full_p = out["pandas"]["full"]
    assert len(full_p) > 5_000 and (full_p["weight"] > 1).any()  # sublinear pairs exist
    for name in ("full", "train", "test"):
        p, s = out["pandas"][name], out["spark"][name]
        assert list(s.columns) == list(p.columns)
        assert s[["user_id", "item_id"]].equals(p[["user_id", "item_id"]]), name
        assert (s["timestamp"] == p["timestamp"]).all(), name
        np.testing.assert_allclose(s["weight"], p["weight"], rtol=1e-12, err_msg=name)


def test_spark_item_lists_equal_the_pandas_ones(window):
    lists = {}
    for engine in ("pandas", "spark"):
        run = item_stats.run(DAY, window["files"], window["items"], k=10, recent_days=7,
                             data_end=AS_OF, users_path=window["users"], engine=engine,
                             lake_root=window["root"] / engine, spark_master="local[2]")
        lists[engine] = pd.read_parquet(run["lists"])
        lists[engine + "-popularity"] = pd.read_parquet(run["popularity"])
    p, s = lists["pandas"], lists["spark"]
    names = set(p["list_name"])
    assert {"popular", "trending", "trending:country:US"} <= names
    assert not any(n.endswith(":ZZ") for n in names)
    assert s[["list_name", "rank", "item_id", "reason"]].equals(
        p[["list_name", "rank", "item_id", "reason"]])
    np.testing.assert_allclose(s["score"], p["score"], rtol=1e-9)
    pp, sp = lists["pandas-popularity"], lists["spark-popularity"]
    assert sp["item_id"].tolist() == pp["item_id"].tolist()
    np.testing.assert_allclose(sp["popularity"], pp["popularity"], rtol=1e-9)


def test_an_unknown_event_type_stops_spark_naming_it(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pydict({
        "event_id": [1], "user_id": [1], "item_id": [1], "event_type": ["wishlist"],
        "rating": [None], "timestamp": [pd.Timestamp("2026-10-31", tz="UTC")]},
        schema=EVENT_SCHEMA), path)
    with pytest.raises(ValueError, match="wishlist"):
        prepare.run(DAY, [str(path)], holdout=0.25, seed=42, engine="spark",
                    lake_root=tmp_path, spark_master="local[1]")
    assert not (tmp_path / "pairs").exists() or not any((tmp_path / "pairs").rglob("*.parquet"))


def test_the_daily_step_picks_spark_from_the_threshold_on(monkeypatch, window):
    monkeypatch.setattr(settings_mod, "_cached", settings_mod.load(
        env={"RECS_SPARK_AGGREGATE_MIN_EVENTS": str(window["n_events"])}))
    assert daily.aggregate_engine({"n_events": window["n_events"]})["engine"] == "spark"
    assert daily.aggregate_engine({"n_events": window["n_events"] - 1})["engine"] == "pandas"
    assert settings_mod.load(env={}).spark_aggregate_min_events == 5_000_000
