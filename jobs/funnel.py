"""The funnel's inputs that need I/O: onboarding preferences read from the users snapshot,
and the trained artefacts fitted in this process (Spark ALS and co-visitation, the
two-tower model) for ``recs evaluate``, the benchmarks and tests.

The funnel itself is pure compute in models/: signals (models/funnel.py:build_signals),
candidates and ranking (models/funnel.py), re-ranking and reasons (models/reasons.py),
the gate (models/gate.py). The daily DAG reads its artefacts from the lake instead
(jobs/daily.py:fit_artifacts).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd

from jobs.configs import two_tower_config
from models.funnel import Artifacts
from models.signals import align_rows

log = logging.getLogger("recs.funnel")


def read_preferences(users_path: str | None) -> dict[int, list[str]]:
    """Onboarding categories per user from the users snapshot (:func:`preferences_of`)."""
    if not users_path:
        return {}
    return preferences_of(pd.read_parquet(users_path))


def preferences_of(users: pd.DataFrame) -> dict[int, list[str]]:
    """Onboarding categories per user from a users frame's ``preferences`` JSON
    (``{"categories": ["Comedy", ...]}``); users without any are left out."""
    if "preferences" not in users:
        return {}
    out = {}
    for uid, raw in zip(users["user_id"], users["preferences"], strict=True):
        if not raw:
            continue
        cats = json.loads(raw).get("categories") or []
        if isinstance(cats, list) and cats:
            out[int(uid)] = [str(c) for c in cats]
    return out


def fit_artifacts(pairs: pd.DataFrame, items: pd.DataFrame, *, spark, settings,
                  text: tuple[np.ndarray, np.ndarray] | None = None) -> Artifacts:
    """Train ALS, the two-tower model and co-visitation on ``pairs`` in this process."""
    from jobs import covisit, train_als
    from jobs.train_two_tower import catalog
    from models import two_tower as tt

    t0 = time.perf_counter()
    params = train_als.AlsParams(settings.als_rank, settings.als_reg, settings.als_alpha,
                                 settings.als_iters, settings.seed)
    # Checkpoints in the lake, which executors on other machines see too.
    als = train_als.train(spark, pairs, params,
                          checkpoint_dir=str(train_als.checkpoint_dir(settings.lake)))
    t1 = time.perf_counter()
    cat = catalog(items, pairs)
    vectors = None
    if text is not None:
        vectors = align_rows(text[0], text[1], cat["item_id"].to_numpy())
    model, item_feats, user_feats = tt.fit(pairs, cat, two_tower_config(settings),
                                           text=vectors)
    two_tower = train_als.Factors(user_feats.user_ids, model.user_vectors(user_feats),
                                  item_feats.item_ids, model.item_vectors(item_feats))
    t2 = time.perf_counter()
    co = covisit.count(spark, pairs, window=settings.covisit_window,
                       top=settings.covisit_top, min_count=settings.covisit_min_count)
    log.info("artifacts: ALS %.1fs, two-tower %.1fs, co-visitation %.1fs", t1 - t0, t2 - t1,
             time.perf_counter() - t2)
    return Artifacts(als, two_tower, co, None if text is None else text[0],
                     None if text is None else text[1])
