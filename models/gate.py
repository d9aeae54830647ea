"""The gate's table and its choice of what to publish (pure compute).

:func:`gate_table` scores popularity, every generator (alone and re-ranked), the ranker
(cross-fitted out of fold, models/funnel.py:crossfit_ranker) and the full pipeline on the
same held-out users; :func:`choose` picks the lists to publish. The daily DAG's gate
(jobs/daily.py, recorded by jobs/evaluate.py) and ``recs evaluate`` (jobs/protocol.py) call
the same function, so the figure the gate records is the figure the protocol reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from models import ranker as rk
from models.funnel import (
    FunnelConfig,
    Pool,
    Ranked,
    best_lists,
    candidate_pool,
    crossfit_ranker,
    pool_labels,
    pool_widths,
)
from models.generators import SOURCES, PoolSizes
from models.metrics import evaluate_all, named
from models.popularity import popularity_predictions
from models.reasons import final_lists
from models.rerank import Rules
from models.signals import Signals

K = 10


def _frame(user_ids: np.ndarray, items: list[np.ndarray]) -> pd.DataFrame:
    """Ranked lists as (user_id, item_id, score) rows, score = descending positions."""
    n = np.array([len(i) for i in items])
    return pd.DataFrame({"user_id": np.repeat(user_ids, n),
                         "item_id": np.concatenate(items) if len(items) else [],
                         "score": np.concatenate([np.arange(len(i), 0, -1) for i in items])
                         if len(items) else []})


def generator_lists(pool: Pool, source: str, keep: int, sizes: PoolSizes) -> Ranked:
    """One generator alone: its own pool among the candidates, in its own order."""
    j = SOURCES.index(source)
    r = pool.cand.ranks[:, j]
    ranked = best_lists(pool.cand, -r.astype("float64"), len(pool.rows), keep,
                        pool_widths(sizes), only=r >= 0)
    ranked.source = [np.full(len(i), j) for i in ranked.items]
    ranked.users = pool.rows
    return ranked


def choose(metrics: dict[str, dict[str, float]], k: int = K) -> dict:
    """The lists to publish: the full pipeline, or a generator's re-ranked lists where
    one scores higher on NDCG@k (ties go to the full pipeline)."""
    key = f"ndcg@{k}"
    options = {}
    if "full_pipeline" in metrics:
        options["full_pipeline"] = metrics["full_pipeline"][key]
    for name, m in metrics.get("reranked", {}).items():
        options[name] = m[key]
    if not options:
        raise ValueError("nothing to choose from: no full pipeline and no generator")
    name = max(options, key=lambda n: (options[n], n == "full_pipeline"))
    figures = metrics["full_pipeline"] if name == "full_pipeline" else \
        metrics["reranked"][name]
    runner_up = sorted(((v, n) for n, v in options.items() if n != name), reverse=True)
    if name == "full_pipeline":
        why = "the full pipeline scores highest"
    else:
        why = (f"{name} alone, re-ranked, scores higher than the full pipeline "
               f"({options.get('full_pipeline', float('nan')):.4f})")
    if runner_up:
        why += f"; next: {runner_up[0][1]} {runner_up[0][0]:.4f}"
    return {"name": name, key: figures[key], f"precision@{k}": figures[f"precision@{k}"],
            "reason": why, "options": {n: round(v, 6) for n, v in options.items()}}


def gate_table(sig: Signals, config: FunnelConfig, train: pd.DataFrame,
               test: pd.DataFrame, *, n_catalog: int, titles: pd.Series, folds: int = 2,
               rules: Rules = Rules(), k: int = K, max_users: int = 5000,
               log_epoch: Callable[[dict], None] | None = None
               ) -> tuple[dict, rk.RankerSet, dict]:
    """The gate's table and the day's ranker, on the held-out ``test`` pairs.

    The users are the test users with training pairs (a seeded sample of ``max_users``
    at most). Their candidates are generated once from ``sig`` (fitted on ``train``); the
    ranker is cross-fitted on them (:func:`crossfit_ranker`: labels are the test pairs,
    the very thing the gate measures, and each user is scored by a ranker that never saw
    that user). Rows, all on the same users, training items excluded: popularity, each
    generator alone, the ranker (out-of-fold), the full pipeline (ranker + re-ranking
    with the rules), and under ``reranked`` each generator's lists after the same
    re-ranking; ``published_model`` is :func:`choose`'s pick among the full pipeline and
    the re-ranked generators. Returns (metrics, ranker for publishing, ranker info).
    """
    t0 = time.perf_counter()
    test_users = np.intersect1d(test["user_id"].to_numpy(), train["user_id"].to_numpy())
    rows = pd.Index(sig.user_ids).get_indexer(test_users)
    rows = np.sort(rows[rows >= 0])
    if len(rows) > max_users:
        rng = np.random.default_rng(config.ranker.seed)
        rows = np.sort(rng.choice(rows, max_users, replace=False))
    user_ids = sig.user_ids[rows]
    truth = test[test["user_id"].isin(user_ids)][["user_id", "item_id"]]
    cats = {int(i): ({sig.category_names[c]} if c >= 0 else set())
            for i, c in zip(sig.item_ids, sig.category, strict=True)}

    def score(pred: pd.DataFrame) -> dict[str, float]:
        return named(evaluate_all(truth, pred, k=k, n_catalog=n_catalog,
                                  item_categories=cats, train=train), k)

    def reranked(ranked: Ranked) -> dict[str, float]:
        lists = final_lists(sig, ranked, titles, k, config=config.rerank, rules=rules,
                            with_reasons=False)
        return score(_frame(lists["user_id"].to_numpy(), list(lists["items"])))

    pool = candidate_pool(sig, rows, config.sizes)
    t1 = time.perf_counter()
    y = pool_labels(sig, pool, truth)
    ranker, oof, info = crossfit_ranker(pool, y, config, folds, log_epoch=log_epoch)
    info["candidate_recall"] = round(float(y.sum()) / max(len(truth), 1), 4)
    info["features_seconds"] = round(t1 - t0, 1)
    out: dict = {"popularity": score(popularity_predictions(train, user_ids, k)),
                 "reranked": {}}
    width = pool_widths(config.sizes)
    for source in SOURCES:
        j = SOURCES.index(source)
        if config.sizes.get(source) == 0 or not (pool.cand.ranks[:, j] >= 0).any():
            continue
        gen = generator_lists(pool, source, config.sizes.get(source), config.sizes)
        out[source] = score(_frame(user_ids, [sig.item_ids[i[:k]] for i in gen.items]))
        out["reranked"][source] = reranked(gen)
    ranked = best_lists(pool.cand, oof, len(rows), 300, width)
    ranked.users = rows
    out["ranker"] = score(_frame(user_ids, [sig.item_ids[i[:k]] for i in ranked.items]))
    out["full_pipeline"] = reranked(ranked)
    out["published_model"] = choose(out, k)
    info["gate_seconds"] = round(time.perf_counter() - t0, 1)
    return out, ranker, info
