"""The offline benchmark protocol behind ``recs evaluate``.

On a MovieLens folder: every rating becomes an event, events become (user, item, weight)
pairs exactly as in the DAG's prepare step, the pairs are split (Microsoft Recommenders'
stratified split, 75/25, seed 42 by default, or a global time split), every model of the
funnel is trained on the training part with the configured parameters, and popularity,
each generator, the ranker and the full pipeline are scored on the same split by the
function the DAG's gate uses (jobs.funnel.evaluate_table).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from core.settings import Settings
from jobs.prepare import split_pairs
from jobs.train_als import spark_session

COLUMNS = ("precision@10", "recall@10", "ndcg@10", "map", "coverage", "diversity@10",
           "novelty@10")


def read_events(path: Path) -> pd.DataFrame:
    """All ratings of a MovieLens folder as events, in file order."""
    from jobs.ingest import movielens

    data = movielens.read(path)
    frames = list(data.iter_events())
    events = pd.concat(frames, ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    return events[["user_id", "item_id", "event_type", "rating", "timestamp"]]


def run(path: Path, *, split: str, settings: Settings, spark=None, folds: int = 1,
        generators: bool = True) -> dict:
    """The benchmark table: popularity, each generator, ALS, two-tower, the ranker and the
    full pipeline on one split of ``path``.

    The ranker learns as the daily DAG's does: its generators are fitted on a part of the
    training pairs and it predicts the rest (``settings.ranker_split``: 'time' holds out
    the newest pairs, 'stratified' a random share per item as the protocol does); with
    ``folds`` > 1 it pools that many such splits (seeds seed+1, seed+2, ...). The rows
    are then scored with every model refitted on the whole training part.
    """
    from jobs import funnel
    from jobs.train_two_tower import catalog, protocol_data, text_matrix

    t0 = time.perf_counter()
    pairs, train, test, items = protocol_data(path, settings.holdout_fraction, settings.seed)
    if split != "stratified":
        train, test = split_pairs(pairs, split, settings.holdout_fraction, settings.seed)
    items = catalog(items, pairs)
    text = (items["item_id"].to_numpy(), text_matrix(items)) if settings.two_tower_text \
        else None
    cfg = settings.funnel_config()
    own = spark is None
    spark = spark or spark_session(settings.spark_master, app="recs-evaluate",
                                   driver_memory=settings.spark_driver_memory)
    timings = {}
    try:
        sets = []
        for f in range(folds):
            part, labels = split_pairs(train, settings.ranker_split, settings.ranker_holdout,
                                       settings.seed + 1 + f)
            t = time.perf_counter()
            art = funnel.fit_artifacts(part, items, spark=spark, settings=settings, text=text)
            sets.append((funnel.build_signals(part, items, art, as_of=part["timestamp"].max(),
                                              config=cfg), labels))
            timings[f"fold_{f + 1}_fit_seconds"] = round(time.perf_counter() - t, 1)
        ranker, info = funnel.fit_ranker(sets, cfg)
        del sets
        t = time.perf_counter()
        art = funnel.fit_artifacts(train, items, spark=spark, settings=settings, text=text)
        timings["final_fit_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        if own:
            spark.stop()
    sig = funnel.build_signals(train, items, art, as_of=train["timestamp"].max(), config=cfg)
    t = time.perf_counter()
    results = funnel.evaluate_table(sig, ranker, cfg, train, test,
                                    n_catalog=int(pairs["item_id"].nunique()),
                                    titles=items.set_index("item_id")["title"],
                                    generators=generators)
    timings["scoring_seconds"] = round(time.perf_counter() - t, 1)
    return {"dataset": str(path), "split": split, "n_pairs": len(pairs),
            "n_train": len(train), "n_test": len(test),
            "params": {"als": {"rank": settings.als_rank, "reg": settings.als_reg,
                               "alpha": settings.als_alpha, "iters": settings.als_iters},
                       "ranker_split": settings.ranker_split,
                       "ranker_holdout": settings.ranker_holdout, "folds": folds,
                       "seed": settings.seed},
            "ranker": info, "results": results, "timings": timings,
            "seconds": round(time.perf_counter() - t0, 1)}


def report_table(table: dict) -> dict:
    """The table in jobs/report.py's layout."""
    name = Path(table["dataset"]).name
    return {"title": f"{name}, {table['split']} split: top-10 on the same test users",
            "columns": [c for c in COLUMNS if all(c in m for m in table["results"].values())],
            "rows": {model: {k: float(v) for k, v in m.items()}
                     for model, m in table["results"].items()},
            "notes": [f"{table['n_train']} training / {table['n_test']} test pairs; "
                      f"ranker trained on {table['params']['folds']} "
                      f"{table['params']['ranker_split']} split(s) of the training part",
                      f"ranker candidates: {table['ranker']['candidates_per_user']} per user, "
                      f"recall {table['ranker']['candidate_recall']}",
                      f"total {table['seconds']} s"]}


def format_table(table: dict) -> str:
    from jobs import report

    return report.format_text(report_table(table))
