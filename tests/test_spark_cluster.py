"""The daily pipeline's Spark steps on a standalone cluster equal their ``local[2]`` runs.

A version is published on small synthetic data by the daily pipeline's own steps
(tests/test_nearline.py:make_live; its lists by the Spark funnel on ``local[2]``). Then,
with a master and two one-core workers of their own (tests/spark_cluster.py; each
worker with private temporary folders, so only the lake is shared), the same inputs go
through the Spark applications once on ``local[2]`` and once on the cluster: ALS
(jobs/train_als.py) factors (with one block and with three), co-visitation
(jobs/covisit.py) tables and the funnel's lists (jobs/spark_funnel.py) must be equal,
value for value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import settings as settings_mod
from tests.test_nearline import make_live, sql
from tests.test_spark_funnel import _same

pytestmark = [pytest.mark.spark, pytest.mark.slow]

LOCAL = "local[2]"


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_SPARK_MASTER", LOCAL)
    # The driver is reached by the executors at this address.
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    yield from make_live(dsn, tmp_path, monkeypatch)


def _factors_equal(a: Path, b: Path, fits=("full", "eval")) -> None:
    from jobs.train_als import load_factors

    for fit in fits:
        x, y = load_factors(a / fit), load_factors(b / fit)
        np.testing.assert_array_equal(x.user_ids, y.user_ids)
        np.testing.assert_array_equal(x.item_ids, y.item_ids)
        np.testing.assert_array_equal(x.user_factors, y.user_factors)
        np.testing.assert_array_equal(x.item_factors, y.item_factors)


def _aggregates_equal(live: dict, arts: dict, master: str, tmp_path: Path) -> None:
    import datetime as dt

    from jobs import item_stats, prepare
    from jobs.extract import window_files
    from tests.test_nearline import DAY

    s = settings_mod.get()
    files = window_files(DAY, s.window_days, None)
    end = (dt.datetime.combine(DAY, dt.time(), dt.UTC) + dt.timedelta(days=1)).isoformat()
    pairs, lists = {}, {}
    for engine, spark_master in (("pandas", None), ("spark", master)):
        root = tmp_path / f"aggregates-{engine}"
        pairs[engine] = prepare.run(DAY, files, holdout=s.holdout_fraction, seed=s.seed,
                                    engine=engine, spark_master=spark_master,
                                    lake_root=root)
        lists[engine] = pd.read_parquet(item_stats.run(
            DAY, files, arts["items"], k=s.trending_k, recent_days=s.trending_days,
            data_end=end, users_path=arts.get("users"), engine=engine,
            spark_master=spark_master, lake_root=root)["lists"])
    for name in ("full", "train", "test"):
        a, b = (pd.read_parquet(pairs[e][name]) for e in ("pandas", "spark"))
        pd.testing.assert_frame_equal(a, pd.read_parquet(live["pairs"][name]))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
        assert len(a) > 100
    a, b = lists["pandas"], lists["spark"]
    assert len(a) > 10
    pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-9)


def test_spark_steps_on_a_cluster_equal_local(live, spark_cluster, tmp_path, monkeypatch):
    from core import lake
    from jobs import covisit, spark_funnel, train_als
    from jobs.configs import funnel_config
    from jobs.daily import FITS
    from jobs.precompute import load_rules

    s = settings_mod.get()
    (arts, model), = sql(
        live["dsn"], "SELECT artifacts, metrics->'published_model'->>'name' "
                     "FROM model_runs WHERE model_version = %s", (live["version"],))
    inputs = {name: live["pairs"][part] for name, part in FITS.items()}
    params = train_als.AlsParams(s.als_rank, s.als_reg, s.als_alpha, s.als_iters, s.seed)
    out = {}
    for label, master in (("local", LOCAL), ("cluster", spark_cluster.url)):
        out[label] = tmp_path / label
        train_als.run(inputs, str(out[label] / "als"), params, master=master)
        covisit.run_many(inputs, str(out[label] / "covisit"), window=s.covisit_window,
                         top=s.covisit_top, min_count=s.covisit_min_count, master=master)

    # ALS: the same factors, bit for bit; the checkpoints (in the lake) are gone.
    _factors_equal(out["local"] / "als", out["cluster"] / "als")
    assert not any((lake.root() / "checkpoints" / "als").iterdir())
    # Also with several ALS blocks, so that every block's solve gathers ratings and
    # factors over the shuffle (between the two workers on the cluster).
    n_pairs = len(pd.read_parquet(inputs["full"]))
    monkeypatch.setattr(train_als, "PAIRS_PER_BLOCK", n_pairs // 3 + 1)
    assert train_als.n_blocks(n_pairs) == 3
    for label, master in (("local", LOCAL), ("cluster", spark_cluster.url)):
        train_als.run({"full": inputs["full"]}, str(out[label] / "als3"), params,
                      master=master)
    _factors_equal(out["local"] / "als3", out["cluster"] / "als3", fits=("full",))
    # Co-visitation: the same table, and the one the version was built with (the tests'
    # plain-Python reference, tests/test_covisit.py).
    for fit in FITS:
        a = pd.read_parquet(out["local"] / "covisit" / fit / "covisit.parquet")
        b = pd.read_parquet(out["cluster"] / "covisit" / fit / "covisit.parquet")
        pd.testing.assert_frame_equal(a, b)
        ref = pd.read_parquet(Path(live["pairs"]["covisit_dir"]) / fit / "covisit.parquet")
        pd.testing.assert_frame_equal(a, ref, check_exact=False, rtol=1e-6)
        assert len(a) > 0

    # The window's events summed on the cluster (prepare, item_stats: Spark) give what
    # pandas gives in this process, and pandas what the version was built with.
    _aggregates_equal(live, arts, spark_cluster.url, tmp_path)

    # The funnel on the cluster: the published lists (made on local[2]), item for item.
    lists_dir = Path(arts["als"]).parents[1] / "lists"
    published = pd.read_parquet(next(lists_dir.iterdir()) / "recommendations")
    assert len(published) > 100
    catalog = next((Path(arts["als"]).parents[1] / "funnel_catalog").iterdir())
    items = pd.read_parquet(arts["items"])
    spark = spark_funnel.session(spark_cluster.url)
    try:
        assert spark.sparkContext.master == spark_cluster.url
        job = spark_funnel.run(
            spark, catalog_dir=str(catalog), pairs_path=arts["pairs"],
            users_path=arts.get("users"), als_dir=str(Path(arts["als"]) / "full"),
            two_tower_dir=str(Path(arts["two_tower"]) / "full"), ranker_dir=arts["ranker"],
            items_path=arts["items"], model=model, config=funnel_config(s),
            rules=load_rules(items), top_k=s.top_k, out_dir=str(tmp_path / "lists"))
    finally:
        spark.stop()
    assert job["n_users"] == len(published)
    _same(pd.read_parquet(tmp_path / "lists"), published)


def test_cluster_has_two_workers_with_their_own_temp(spark_cluster):
    from tests.spark_cluster import alive_workers, cmdline

    assert alive_workers(spark_cluster.webui) == 2
    tmpdirs = set()
    for pid in spark_cluster.pids:
        args = cmdline(pid)
        tmpdirs |= {a for a in args if a.startswith("-Djava.io.tmpdir=")}
    assert len(tmpdirs) == 3  # the master's and each worker's own


def test_a_stopped_cluster_leaves_no_process(tmp_path):
    from tests.spark_cluster import group_members, standalone

    with standalone(tmp_path, workers=1) as cluster:
        assert len(group_members(set(cluster.pids))) >= 2
    # standalone() raises if any is left; check again from here.
    assert group_members(set(cluster.pids)) == []
