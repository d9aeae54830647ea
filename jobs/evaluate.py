"""Evaluate a trained model on the held-out split, against popularity, and gate it.

The same functions serve the daily DAG (its gate) and ``recs evaluate`` (the benchmark
protocol), so the figure the gate records is the figure the protocol reports. The gate's
table is computed by models/gate.py:gate_table; this module decides whether it passes
(:func:`passes_gate`) and records the run in ``model_runs`` (:func:`run`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pandas as pd

from core import db
from jobs.train_als import Factors
from models import index as ann
from models.metrics import evaluate_all, named
from models.popularity import popularity_predictions
from models.topk import recommend

log = logging.getLogger("recs.evaluate")
K = 10


def als_predictions(factors: Factors, train: pd.DataFrame, test_users: np.ndarray,
                    k: int = K, exact_max: int = 50_000) -> pd.DataFrame:
    """Top-k per test user from ALS factors, training items excluded."""
    index = ann.build(factors.item_factors, ann.IndexConfig(exact_max=exact_max))
    user_ids, rows, scores = recommend(factors, index, train, k, users=test_users)
    valid = rows >= 0
    return pd.DataFrame({
        "user_id": np.repeat(user_ids, valid.sum(axis=1)),
        "item_id": factors.item_ids[rows[valid]],
        "score": scores[valid],
    })


def compare(factors: Factors, train: pd.DataFrame, test: pd.DataFrame, n_catalog: int,
            k: int = K, exact_max: int = 50_000) -> dict[str, dict[str, float]]:
    """Metrics of ALS and of popularity on the same split and the same users.

    Both are scored on the test users that have training interactions: ALS has no vector
    for the others, and comparing models on different users would compare the users.
    """
    test_users = np.intersect1d(test["user_id"].to_numpy(), train["user_id"].to_numpy())
    als = als_predictions(factors, train, test_users, k, exact_max)
    popular = popularity_predictions(train, test_users, k)
    truth = test[["user_id", "item_id"]]
    return {"als": named(evaluate_all(truth, als, k=k, n_catalog=n_catalog), k),
            "popularity": named(evaluate_all(truth, popular, k=k, n_catalog=n_catalog), k)}


def gated_model(metrics: dict) -> str:
    """The key of the lists a version publishes: the gate's choice
    (``published_model``, models.gate.choose), else the full funnel, else ALS."""
    if "published_model" in metrics:
        return metrics["published_model"]["name"]
    return "full_pipeline" if "full_pipeline" in metrics else "als"


def gated_figures(metrics: dict) -> dict[str, float]:
    """The published lists' figures."""
    if "published_model" in metrics:
        return metrics["published_model"]
    return metrics[gated_model(metrics)]


def passes_gate(metrics: dict[str, dict[str, float]], margin: float,
                live_ndcg: float | None = None, tolerance: float = 0.02) -> tuple[bool, str]:
    """A version's published lists must beat popularity on NDCG@10 by ``margin`` and not
    fall more than ``tolerance`` below the live version."""
    name = gated_model(metrics)
    ndcg = gated_figures(metrics)[f"ndcg@{K}"]
    base = metrics["popularity"][f"ndcg@{K}"]
    if ndcg <= base + margin:
        return False, (f"{name} NDCG@{K} {ndcg:.4f} does not beat popularity {base:.4f} "
                       f"+ {margin}: nothing is published")
    if live_ndcg is not None and ndcg < live_ndcg - tolerance:
        return False, (f"{name} NDCG@{K} {ndcg:.4f} regresses against the live version "
                       f"{live_ndcg:.4f} by more than {tolerance}: nothing is published")
    return True, f"{name} NDCG@{K} {ndcg:.4f} beats popularity {base:.4f}"


def model_version(day: dt.date, digest: str) -> str:
    return f"v{day:%Y%m%d}-{digest[:8]}"


def run(day: dt.date, *, version: str, metrics: dict, pairs: dict, extract: dict,
        index_meta: dict, artifacts: dict, params: dict, digest: str, margin: float,
        dsn: str | None = None) -> dict:
    """Gate ``metrics`` (models.gate.gate_table), record the run in ``model_runs``
    and return whether it may publish."""
    metrics = {**metrics, "index": index_meta}
    gated = gated_model(metrics)
    with db.transaction(dsn) as cur:
        cur.execute("""SELECT COALESCE(r.metrics->'published_model'->>'ndcg@10',
                                       r.metrics->'full_pipeline'->>'ndcg@10',
                                       r.metrics->'als'->>'ndcg@10')::float
                       FROM serving_state s
                       JOIN model_runs r ON r.model_version = s.live_version
                       WHERE s.live_version <> %s""", (version,))
        row = cur.fetchone()
        live_ndcg = row[0] if row else None
        passed, message = passes_gate(metrics, margin, live_ndcg)
        status = "evaluated" if passed else "rejected"
        cur.execute("""
            INSERT INTO model_runs (model_version, kind, logical_date, params, config_digest,
                data_from, data_until, n_users, n_items, n_interactions, metrics, artifacts,
                status, message, finished_at)
            VALUES (%s, 'daily', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
            ON CONFLICT (model_version) DO UPDATE SET
                params = EXCLUDED.params, data_from = EXCLUDED.data_from,
                data_until = EXCLUDED.data_until, n_users = EXCLUDED.n_users,
                n_items = EXCLUDED.n_items, n_interactions = EXCLUDED.n_interactions,
                metrics = EXCLUDED.metrics, artifacts = EXCLUDED.artifacts,
                status = CASE WHEN model_runs.status = 'published' AND EXCLUDED.status =
                              'evaluated' THEN 'published' ELSE EXCLUDED.status END,
                message = EXCLUDED.message, finished_at = now()""",
            (version, day, json.dumps(params), digest, extract["data_from"],
             extract["data_until"], pairs["n_users"], pairs["n_items"], extract["n_events"],
             json.dumps(metrics), json.dumps(artifacts), status, message))
    log.info("%s: %s (%s)", version, status, message)
    return {"version": version, "passed": passed, "message": message, "model": gated,
            "ndcg@10": gated_figures(metrics)["ndcg@10"],
            "popularity_ndcg@10": metrics["popularity"]["ndcg@10"]}
