"""Precompute per-user top-K lists and per-item similar lists, each item with a reason.

Personalized (:func:`run_funnel`, the daily DAG): the lists the gate chose, i.e. the
funnel (models/funnel.py: candidates from every generator, the learned ranker;
models/reasons.py: re-ranking with the business rules, a true reason per item) or, where
one generator alone scored higher, that generator's lists through the same re-ranking
and reasons.
:func:`personalized_lists` is the ALS-only path the nearline DAG uses to refresh a
user's list between daily runs (the reason names the item of the user's history most
similar to the pick). Similar items: cosine neighbours of each item
in ALS space ("Similar to <title>"). Output: ``lists/dt=<date>/recommendations/``
(Parquet files, one or more per Spark bucket) and ``lists/dt=<date>/similar.parquet``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core import lake
from core.constants import NO_REASON_ITEM
from jobs.build_index import load_index
from jobs.rules import blocked_in_catalog, drop_blocked_lists
from jobs.train_als import Factors, load_factors
from models import index as ann
from models.generators import SOURCES
from models.topk import because_items, recommend, rows_per_user

log = logging.getLogger("recs.precompute")
HISTORY_FOR_REASONS = 200
HISTORY_TAIL = 10


def personalized_lists(factors: Factors, index, pairs: pd.DataFrame, titles: pd.Series,
                       k: int) -> pd.DataFrame:
    user_ids, rows, scores = recommend(factors, index, pairs, k)
    history = rows_per_user(pairs, user_ids, factors.item_ids, newest_first=True)
    because = because_items(factors.item_factors, rows,
                            [h[:HISTORY_FOR_REASONS] for h in history])
    item_ids = factors.item_ids
    records = []
    for u, uid in enumerate(user_ids):
        valid = rows[u] >= 0
        recs = item_ids[rows[u][valid]]
        why = because[u][valid]
        reason_ids = np.where(why >= 0, item_ids[np.maximum(why, 0)],
                              NO_REASON_ITEM)
        reasons = [f"Because you watched {titles.get(r, str(r))}" if r >= 0
                   else "Recommended for you" for r in reason_ids]
        records.append((int(uid), recs.astype("int64"), scores[u][valid].astype("float32"),
                        reasons, reason_ids.astype("int64"),
                        item_ids[history[u][:HISTORY_TAIL]].astype("int64")))
    return pd.DataFrame(records, columns=["user_id", "items", "scores", "reasons",
                                          "reason_item_ids", "history_tail"])


def similar_lists(factors: Factors, index, titles: pd.Series, k: int) -> pd.DataFrame:
    scores, rows = ann.search(index, factors.item_factors, k + 1, normalize=True)
    item_ids = factors.item_ids
    records = []
    for i, iid in enumerate(item_ids):
        keep = (rows[i] >= 0) & (rows[i] != i)
        r, s = rows[i][keep][:k], scores[i][keep][:k]
        title = titles.get(iid, str(iid))
        records.append((int(iid), item_ids[r].astype("int64"), s.astype("float32"),
                        [f"Similar to {title}"] * len(r)))
    return pd.DataFrame(records, columns=["item_id", "items", "scores", "reasons"])


def load_rules(items: pd.DataFrame, dsn: str | None = None):
    """Business rules from the ``rerank_rules`` table and ``RECS_RULES_FILE``."""
    from core import db
    from core import settings as settings_mod
    from jobs import rules

    s = settings_mod.get()
    tags = dict(zip(items["item_id"].to_numpy().tolist(), items["tags"], strict=True))
    conn = db.connect(dsn)
    try:
        return rules.load(conn, s.rules_file or None, tags)
    finally:
        conn.close()


def run_funnel(day: dt.date, catalog, *, inputs: dict[str, str | None], items: pd.DataFrame,
               ranker_dir: str, factors_dir: str, index_dir: str, top_k: int,
               similar_k: int, config, rules, model: str = "full_pipeline",
               master: str | None = None, driver_memory: str = "2g",
               lake_root: Path | None = None) -> dict:
    """Every user's list, and the similar-items lists, into ``lists/dt=<day>/``.

    ``model``: the gate's choice, 'full_pipeline' (candidates, ranker, re-ranking) or one
    generator's name (its own lists, re-ranked with the same rules); reasons either way.
    The users' lists come from the Spark job jobs/spark_funnel.py (``master``: the
    settings' RECS_SPARK_MASTER): ``catalog`` (models/funnel.py:item_signals) is written
    to ``funnel_catalog/dt=<day>/`` for its executors. ``inputs``: the full fit's
    ``pairs``, the ``users`` snapshot, the ``als`` and ``two_tower`` factor folders and
    the ``items`` snapshot."""
    from jobs import spark_funnel

    if model != "full_pipeline" and model not in SOURCES:
        raise ValueError(f"model={model!r}: expected 'full_pipeline' or one of {SOURCES}")
    t0 = time.perf_counter()
    catalog_dir = lake.partition("funnel_catalog", day, lake_root)
    spark_funnel.save_catalog(catalog, catalog_dir)
    titles = items.set_index("item_id")["title"]
    out = lake.partition("lists", day, lake_root)
    with lake.atomic_dir(out) as tmp:
        spark = spark_funnel.session(master, driver_memory)
        try:
            job = spark_funnel.run(
                spark, catalog_dir=str(catalog_dir), pairs_path=inputs["pairs"],
                users_path=inputs.get("users"), als_dir=inputs.get("als"),
                two_tower_dir=inputs.get("two_tower"), ranker_dir=ranker_dir,
                items_path=inputs["items"], model=model, config=config, rules=rules,
                top_k=top_k, out_dir=str(tmp / "recommendations"))
        finally:
            spark.stop()
        t1 = time.perf_counter()
        factors = load_factors(Path(factors_dir))
        sims = similar_lists(factors, load_index(Path(index_dir) / "items_cos.faiss"), titles,
                             similar_k)
        sims, _ = drop_blocked_lists(sims, blocked_in_catalog(
            rules, zip(items["item_id"].tolist(), items["category"].tolist(), strict=True)))
        sims.to_parquet(tmp / "similar.parquet", index=False)
    recs = pd.read_parquet(out / "recommendations", columns=["sources"])
    log.info("funnel: %d user lists in %.1fs (%.0f users/s, Spark %s), %d similar lists",
             job["n_users"], t1 - t0, job["users_per_s"], master, len(sims))
    sources = pd.Series(np.concatenate(recs["sources"].to_numpy()) if len(recs) else [])
    return {"recommendations": str(out / "recommendations"),
            "similar": str(out / "similar.parquet"), "model": model,
            "n_users": job["n_users"], "n_similar": len(sims),
            "users_per_s": job["users_per_s"], "buckets": job["buckets"],
            "sources": {k: int(v) for k, v in sources.value_counts().items()}}
