"""The offline benchmark protocol behind ``recs evaluate``.

On a MovieLens folder: every rating becomes an event, events become (user, item, weight)
pairs exactly as in the DAG's prepare step, the pairs are split (Microsoft Recommenders'
stratified split, 75/25, seed 42 by default, or a global time split), every model of the
funnel is trained on the training part with the configured parameters, and popularity,
each generator, the ranker, the full pipeline and the published choice are scored on the
same split by the function the DAG's gate uses (models.gate.gate_table).
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


def run(path: Path, *, split: str, settings: Settings, spark=None,
        generators: bool = True) -> dict:
    """The benchmark table on one split of ``path``, computed as the daily DAG's gate
    computes it (models.gate.gate_table, with the same settings): every model fitted on
    the training part, the ranker cross-fitted on the test users, then popularity, each
    generator, the ranker, the full pipeline and the gate's published choice scored on
    the same users. ``generators`` is kept for callers; every generator is always
    scored, since the gate chooses among them."""
    from jobs.train_two_tower import catalog, protocol_data, text_matrix

    del generators
    t0 = time.perf_counter()
    pairs, train, test, items = protocol_data(path, settings.holdout_fraction, settings.seed)
    if split != "stratified":
        train, test = split_pairs(pairs, split, settings.holdout_fraction, settings.seed)
    return run_pairs(pairs, train, test, catalog(items, pairs), settings=settings,
                     spark=spark, dataset=str(path), split=split, t0=t0,
                     text=text_matrix if settings.two_tower_text else None)


def run_pairs(pairs: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame,
              items: pd.DataFrame, *, settings: Settings, dataset: str, split: str,
              spark=None, t0: float | None = None, text=None) -> dict:
    """:func:`run` on given pairs and split (``text``: a function of the items giving
    their MiniLM vectors, or None for no text)."""
    from jobs.configs import funnel_config
    from jobs.funnel import fit_artifacts
    from models.funnel import build_signals
    from models.gate import gate_table

    t0 = time.perf_counter() if t0 is None else t0
    vectors = (items["item_id"].to_numpy(), text(items)) if text else None
    cfg = funnel_config(settings)
    own = spark is None
    spark = spark or spark_session(settings.spark_master, app="recs-evaluate",
                                   driver_memory=settings.spark_driver_memory)
    timings = {}
    try:
        t = time.perf_counter()
        art = fit_artifacts(train, items, spark=spark, settings=settings, text=vectors)
        timings["fit_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        if own:
            spark.stop()
    sig = build_signals(train, items, art, as_of=train["timestamp"].max(), config=cfg)
    t = time.perf_counter()
    results, _, info = gate_table(sig, cfg, train, test,
                                  n_catalog=int(pairs["item_id"].nunique()),
                                  titles=items.set_index("item_id")["title"],
                                  folds=settings.ranker_folds,
                                  max_users=settings.gate_max_users)
    timings["gate_seconds"] = round(time.perf_counter() - t, 1)
    return {"dataset": dataset, "split": split, "n_pairs": len(pairs),
            "n_train": len(train), "n_test": len(test),
            "params": {"als": {"rank": settings.als_rank, "reg": settings.als_reg,
                               "alpha": settings.als_alpha, "iters": settings.als_iters},
                       "ranker_folds": settings.ranker_folds,
                       "gate_max_users": settings.gate_max_users, "seed": settings.seed,
                       "changed": changed_settings(settings)},
            "ranker": info, "results": results, "timings": timings,
            "seconds": round(time.perf_counter() - t0, 1)}


def changed_settings(settings: Settings) -> dict:
    """The model parameters that differ from the shipped defaults (printed in the
    report: a figure obtained with any of them is not the default's)."""
    from jobs.configs import model_params

    default = model_params(Settings())
    return {k: v for k, v in model_params(settings).items() if default.get(k) != v}


def report_table(table: dict) -> dict:
    """The table in jobs/report.py's layout."""
    name = Path(table["dataset"]).name
    res = table["results"]
    rows = {model: {k: float(v) for k, v in m.items()} for model, m in res.items()
            if model not in ("reranked", "published_model")}
    pick = res["published_model"]
    rows["published"] = dict(res["reranked"].get(pick["name"]) or res["full_pipeline"])
    changed = table["params"].get("changed") or {}
    return {"title": f"{name}, {table['split']} split: top-10 on the same test users",
            "columns": [c for c in COLUMNS if all(c in m for m in rows.values())],
            "rows": rows,
            "notes": [f"{table['n_train']} training / {table['n_test']} test pairs; "
                      f"ranker cross-fitted over {table['params']['ranker_folds']} folds of "
                      f"the test users (each scored out of fold), as the daily gate does",
                      f"published: {pick['name']} ({pick['reason']})",
                      f"ranker candidates: {table['ranker']['candidates_per_user']} per user, "
                      f"recall {table['ranker']['candidate_recall']}",
                      "settings: the shipped defaults" if not changed else
                      f"settings changed from the defaults: {changed}",
                      f"total {table['seconds']} s"]}


def format_table(table: dict) -> str:
    from jobs import report

    return report.format_text(report_table(table))
