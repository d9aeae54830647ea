"""The funnel as a Spark job (jobs/spark_funnel.py) against the in-process funnel.

A version is built and published by the daily pipeline's own steps on small synthetic
data (tests/test_nearline.py:make_live; its precompute step runs the Spark job on
``local[2]``). The same lists are then computed in this process by models/ (signals of
every user at once, rank_users, final_lists) and must be equal, item for item, score for
score, reason for reason; a second Spark run with another number of buckets too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import settings as settings_mod
from tests.test_nearline import make_live, sql

pytestmark = pytest.mark.spark

COLUMNS = ("items", "scores", "reasons", "reason_item_ids", "sources", "history_tail")


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_SPARK_MASTER", "local[2]")
    yield from make_live(dsn, tmp_path, monkeypatch)


def _in_process(arts: dict, model: str) -> pd.DataFrame:
    from jobs import daily
    from jobs.configs import funnel_config
    from jobs.precompute import load_rules
    from models.funnel import build_signals, rank_users
    from models.ranker import load as load_ranker
    from models.reasons import final_lists

    s = settings_mod.get()
    cfg = funnel_config(s)
    pairs = pd.read_parquet(arts["pairs"])
    items = pd.read_parquet(arts["items"])
    art = daily.fit_artifacts("full", arts["als"], arts["two_tower"], arts["covisit"],
                              arts["text"])
    prefs, countries = daily.user_context(arts.get("users"))
    sig = build_signals(pairs, items, art, as_of=pd.Timestamp(arts["data_end"]),
                        config=cfg, preferences=prefs, countries=countries)
    rows = np.arange(sig.n_users)
    ranked = rank_users(sig, rows, cfg, load_ranker(arts["ranker"])) \
        if model == "full_pipeline" else \
        rank_users(sig, rows, cfg, None, by=model, keep=max(cfg.sizes.get(model), s.top_k))
    return final_lists(sig, ranked, items.set_index("item_id")["title"], s.top_k,
                       config=cfg.rerank, rules=load_rules(items))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values("user_id", ignore_index=True)
    b = b.sort_values("user_id", ignore_index=True)
    assert a["user_id"].tolist() == b["user_id"].tolist()
    for column in COLUMNS:
        for user, x, y in zip(a["user_id"], a[column], b[column], strict=True):
            assert list(x) == list(y), (column, user, list(x)[:5], list(y)[:5])


def test_spark_lists_equal_the_in_process_funnel(live, tmp_path):
    from jobs import spark_funnel
    from jobs.configs import funnel_config
    from jobs.precompute import load_rules

    (arts, model, day), = sql(
        live["dsn"], "SELECT artifacts, metrics->'published_model'->>'name', logical_date "
                     "FROM model_runs WHERE model_version = %s", (live["version"],))
    # The run of logical day D reads the events before D + 1 (jobs/extract.py).
    arts["data_end"] = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    lists_dir = Path(arts["als"]).parents[1] / "lists"
    published = pd.read_parquet(next(lists_dir.iterdir()) / "recommendations")
    assert len(published) > 100
    expected = _in_process(arts, model)
    _same(published, expected)

    # Another bucketing of the same users gives the same lists.
    s = settings_mod.get()
    catalog = next((Path(arts["als"]).parents[1] / "funnel_catalog").iterdir())
    items = pd.read_parquet(arts["items"])
    spark = spark_funnel.session("local[2]")
    try:
        out = spark_funnel.run(
            spark, catalog_dir=str(catalog), pairs_path=arts["pairs"],
            users_path=arts.get("users"), als_dir=str(Path(arts["als"]) / "full"),
            two_tower_dir=str(Path(arts["two_tower"]) / "full"), ranker_dir=arts["ranker"],
            items_path=arts["items"], model=model, config=funnel_config(s),
            rules=load_rules(items), top_k=s.top_k, out_dir=str(tmp_path / "again"),
            buckets=7)
    finally:
        spark.stop()
    assert out["buckets"] == 7 and out["n_users"] == len(expected)
    _same(pd.read_parquet(tmp_path / "again"), expected)
