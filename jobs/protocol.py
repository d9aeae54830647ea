"""The offline benchmark protocol behind ``recs evaluate``.

On a MovieLens folder: every rating becomes an event, events become (user, item, weight)
pairs exactly as in the DAG's prepare step, the pairs are split (Microsoft Recommenders'
stratified split, 75/25, seed 42 by default, or a global time split), ALS is trained on
the training part with the configured parameters, and ALS and popularity are scored on
the same split by the functions the DAG's gate uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from core.settings import Settings
from jobs import evaluate as ev
from jobs.prepare import split_pairs
from jobs.train_als import AlsParams, spark_session, train
from models.confidence import aggregate_pairs

COLUMNS = ("precision@10", "recall@10", "ndcg@10", "map", "coverage")


def read_events(path: Path) -> pd.DataFrame:
    """All ratings of a MovieLens folder as events, in file order."""
    from jobs.ingest import movielens

    data = movielens.read(path)
    frames = list(data.iter_events())
    events = pd.concat(frames, ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    return events[["user_id", "item_id", "event_type", "rating", "timestamp"]]


def run(path: Path, *, split: str, settings: Settings, spark=None) -> dict:
    t0 = time.perf_counter()
    pairs = aggregate_pairs(read_events(path))
    train_pairs, test_pairs = split_pairs(pairs, split, settings.holdout_fraction, settings.seed)
    params = AlsParams(settings.als_rank, settings.als_reg, settings.als_alpha,
                       settings.als_iters, settings.seed)
    own = spark is None
    spark = spark or spark_session(settings.spark_master, app="recs-evaluate",
                                   driver_memory=settings.spark_driver_memory)
    try:
        t_train = time.perf_counter()
        factors = train(spark, train_pairs, params)
        train_s = time.perf_counter() - t_train
    finally:
        if own:
            spark.stop()
    results = ev.compare(factors, train_pairs, test_pairs,
                         n_catalog=int(pairs["item_id"].nunique()),
                         exact_max=settings.exact_index_max_items)
    return {"dataset": str(path), "split": split, "n_pairs": len(pairs),
            "n_train": len(train_pairs), "n_test": len(test_pairs),
            "params": {"rank": params.rank, "reg": params.reg, "alpha": params.alpha,
                       "iters": params.iters, "seed": params.seed},
            "results": results, "train_seconds": round(train_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def format_table(table: dict) -> str:
    head = (f"{table['dataset']} - split {table['split']}: {table['n_train']} train / "
            f"{table['n_test']} test pairs; ALS {table['params']}")
    lines = [head, f"{'model':<12}" + "".join(f"{c:>14}" for c in COLUMNS)]
    for model, metrics in table["results"].items():
        lines.append(f"{model:<12}" + "".join(f"{metrics[c]:>14.4f}" for c in COLUMNS))
    lines.append(f"ALS training {table['train_seconds']}s, total {table['seconds']}s")
    return "\n".join(lines)
