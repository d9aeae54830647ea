"""The two-stage funnel's assembly: signals -> candidates -> learned ranking (pure compute).

The same functions run in the daily DAG's ``evaluate`` and ``precompute`` steps, in
nearline, in ``recs evaluate`` and in the tests; reading and writing are the callers'
(jobs/daily.py, jobs/nearline.py, jobs/precompute.py, jobs/protocol.py):

* :func:`build_signals` puts the trained artefacts (ALS and two-tower vectors, Spark
  co-visitation, MiniLM text vectors) and the training pairs on one catalog
  (models/signals.py); jobs/funnel.py reads or trains those artefacts;
* :func:`candidate_pool` / :func:`crossfit_ranker`: the ranker learns from the held-out
  users' candidates (models/generators.py, features from models/features.py), labelled
  by their held-out pairs, each user scored out of fold;
* :func:`rank_users` scores every candidate of every user with the ranker (or one
  generator alone) and keeps the best per user (:class:`Ranked`).

Re-ranking and reasons are in models/reasons.py (:func:`models.reasons.final_lists`); the
gate's table and its choice in models/gate.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from models import popularity as pop
from models import ranker as rk
from models.features import feature_names, features
from models.generators import SOURCES, Candidates, PoolSizes, generate
from models.rerank import RerankConfig
from models.signals import (
    HOUR_BUCKETS,
    Signals,
    align_rows,
    covisit_matrix,
    histories,
    hour_profile,
    item_item,
    unit_rows,
)

log = logging.getLogger("recs.funnel")
USER_BATCH = 256


@dataclass
class Artifacts:
    """Trained inputs of the funnel; any may be None (its generator is then off)."""

    als: object | None = None  # Factors layout (jobs/train_als.py)
    two_tower: object | None = None  # Factors layout: user/item ids and vectors
    covisit: pd.DataFrame | None = None  # item_id, neighbour_id, score
    text_ids: np.ndarray | None = None
    text: np.ndarray | None = None  # (len(text_ids), d)


@dataclass(frozen=True)
class FunnelConfig:
    """The funnel's knobs: pool sizes, EASE, the 'new' window, the ranker, the re-ranking
    (jobs/configs.py:funnel_config builds it from the settings)."""

    sizes: PoolSizes = PoolSizes()
    ease_lambda: float = 200.0
    ease_max_items: int = 20_000
    new_days: float = 14.0
    exact_max: int = 50_000  # the vector generators' indices: exact up to this, then HNSW
    ranker: rk.RankerConfig = rk.RankerConfig()
    rerank: RerankConfig = RerankConfig(diversity=0.0, freshness_weight=0.0, max_run=2,
                                        popularity_penalty=0.1)


def catalog_ids(pairs: pd.DataFrame, items: pd.DataFrame | None) -> np.ndarray:
    """Item ids of ``pairs`` and of the items snapshot, sorted, each once."""
    ids = pairs["item_id"].to_numpy("int64")
    if items is not None:
        ids = np.concatenate([ids, items["item_id"].to_numpy("int64")])
    return np.unique(ids)


def item_signals(pairs: pd.DataFrame, items: pd.DataFrame | None, art: Artifacts, *,
                 as_of: pd.Timestamp, config: FunnelConfig = FunnelConfig(),
                 countries: pd.Series | None = None) -> Signals:
    """The catalog side of the signals (paired items and the items snapshot), from every
    pair: categories, popularity, trending, age, time-of-day profiles, popularity per
    country (``countries``: country code by user id), item vectors and the item-item
    views. Its user side is empty: :func:`with_users` adds one."""
    item_ids = catalog_ids(pairs, items)
    cats = pd.Series(index=item_ids, dtype="object")
    if items is not None and "category" in items:
        cats = items.drop_duplicates("item_id").set_index("item_id")["category"] \
            .reindex(item_ids)
    names = tuple(sorted(c for c in cats.dropna().unique()))
    code = pd.Index(names).get_indexer(cats.to_numpy())
    counts = pairs.groupby("item_id")["user_id"].nunique().reindex(item_ids, fill_value=0)
    events = pairs[["user_id", "item_id", "timestamp"]]
    decayed = pop.popularity(events, as_of).reindex(item_ids, fill_value=0.0).to_numpy()
    trend = pop.trending(events, as_of).reindex(item_ids, fill_value=0.0).to_numpy()
    trending = decayed / max(decayed.max(), 1e-9) + trend / max(trend.max(), 1e-9)
    first = pairs.groupby("item_id")["timestamp"].min().reindex(item_ids)
    if items is not None and "created_at" in items:
        created = pd.to_datetime(items.drop_duplicates("item_id").set_index("item_id")
                                 ["created_at"], utc=True).reindex(item_ids)
        first = first.fillna(created)
    age = ((as_of - first).dt.total_seconds() / 86_400.0).fillna(0.0).to_numpy("float32")
    item_row = pd.Index(item_ids).get_indexer(pairs["item_id"].to_numpy())
    no_users = np.empty(0, "int64")
    sig = Signals(
        user_ids=no_users, item_ids=item_ids, history=[], history_weight=[],
        category=code.astype("int64"), category_names=names,
        popularity=counts.to_numpy("float32"), trending=trending.astype("float32"),
        age_days=np.maximum(age, 0.0), new_days=config.new_days, exact_max=config.exact_max,
        item_hours=hour_profile(item_row, pairs["timestamp"], len(item_ids)),
        user_hours=np.zeros((0, HOUR_BUCKETS), "float32"))
    if countries is not None and countries.notna().any():
        country = countries.dropna().astype(str)
        sig.country_names = tuple(sorted(country.unique()))
        per = np.zeros((len(sig.country_names), len(item_ids)), "float32")
        c_of_pair = pd.Index(sig.country_names).get_indexer(
            country.reindex(pairs["user_id"].to_numpy()).to_numpy())
        ok = (c_of_pair >= 0) & (item_row >= 0)
        np.add.at(per, (c_of_pair[ok], item_row[ok]), 1.0)
        sig.country_popularity = per / np.maximum(per.max(1, keepdims=True), 1.0)
    if art.als is not None:
        sig.als_items = align_rows(art.als.item_ids, art.als.item_factors, item_ids)
    if art.two_tower is not None:
        sig.tt_items = align_rows(art.two_tower.item_ids, art.two_tower.item_factors,
                                  item_ids)
    if art.text is not None:
        sig.text = unit_rows(align_rows(art.text_ids, art.text, item_ids))
    if art.covisit is not None:
        sig.covisit = covisit_matrix(art.covisit, item_ids)
    if config.ease_max_items > 0:
        sig.ease, sig.itemknn = item_item(pairs, item_ids, config.ease_lambda,
                                          config.ease_max_items)
    return sig


def with_users(catalog: Signals, pairs: pd.DataFrame, users: np.ndarray, *,
               art: Artifacts = Artifacts(),
               preferences: dict[int, list[str]] | None = None,
               countries: pd.Series | None = None) -> Signals:
    """``catalog`` (from :func:`item_signals`) with the user side of ``users``: their
    histories and time-of-day profiles from ``pairs`` (only the pairs of ``users`` are
    read), onboarding ``preferences``, countries and user vectors. The catalog's arrays
    and its retrieval structures are shared, not copied, so that one catalog serves many
    batches of users (a Spark executor's partitions)."""
    users = np.asarray(users, "int64")
    mine = pairs[pairs["user_id"].isin(users)]
    hist, weight = histories(mine, users, catalog.item_ids)
    user_row = pd.Index(users).get_indexer(mine["user_id"].to_numpy())
    prefs = {}
    for uid, wanted in (preferences or {}).items():
        r = pd.Index(users).get_indexer([uid])[0]
        c = pd.Index(catalog.category_names).get_indexer(list(wanted))
        if r >= 0 and (c >= 0).any():
            prefs[int(r)] = c[c >= 0]
    sig = replace(catalog, user_ids=users, history=hist, history_weight=weight,
                  user_hours=hour_profile(user_row, mine["timestamp"], len(users)),
                  preferences=prefs, user_country=None, als_users=None, tt_users=None)
    if catalog.country_names and countries is not None:
        sig.user_country = pd.Index(catalog.country_names).get_indexer(
            countries.dropna().astype(str).reindex(users).to_numpy())
    if art.als is not None and catalog.als_items is not None:
        sig.als_users = align_rows(art.als.user_ids, art.als.user_factors, users)
    if art.two_tower is not None and catalog.tt_items is not None:
        sig.tt_users = align_rows(art.two_tower.user_ids, art.two_tower.user_factors,
                                  users)
    return sig


def funnel_users(pairs: pd.DataFrame, preferences: dict[int, list[str]] | None = None
                 ) -> np.ndarray:
    """The users the funnel serves: every user of ``pairs`` and every user with
    onboarding ``preferences``, sorted."""
    return np.unique(np.concatenate([pairs["user_id"].to_numpy("int64"),
                                     np.fromiter((preferences or {}).keys(), "int64")]))


def build_signals(pairs: pd.DataFrame, items: pd.DataFrame | None, art: Artifacts, *,
                  as_of: pd.Timestamp, config: FunnelConfig = FunnelConfig(),
                  users: np.ndarray | None = None,
                  preferences: dict[int, list[str]] | None = None,
                  countries: pd.Series | None = None) -> Signals:
    """Signals over the catalog (paired items and the items snapshot) for ``users``
    (default: :func:`funnel_users`). ``countries``: country code by user id (the
    ``country`` generator). :func:`item_signals` then :func:`with_users`."""
    catalog = item_signals(pairs, items, art, as_of=as_of, config=config,
                           countries=countries)
    if users is None:
        users = funnel_users(pairs, preferences)
    return with_users(catalog, pairs, users, art=art, preferences=preferences,
                      countries=countries)


# --- Candidates, features and the ranker ------------------------------------------------


def candidate_batches(sig: Signals, users: np.ndarray, sizes: PoolSizes,
                      batch: int = USER_BATCH):
    """Yield (user rows, Candidates with user = positions into those rows, features)."""
    for a in range(0, len(users), batch):
        rows = users[a:a + batch]
        cand = generate(sig, rows, sizes)
        yield rows, cand, features(sig, rows, cand)


@dataclass
class Pool:
    """Every candidate of ``rows`` (user rows) with its features, sorted by user:
    ``cand.user`` indexes ``rows``."""

    rows: np.ndarray
    cand: Candidates
    x: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.searchsorted(self.cand.user, np.arange(len(self.rows) + 1))


def candidate_pool(sig: Signals, rows: np.ndarray, sizes: PoolSizes) -> Pool:
    """Candidates and features of ``rows``, generated once, for training and scoring."""
    users, items, ranks, scores, xs = [], [], [], [], []
    offset = 0
    for batch_rows, cand, x in candidate_batches(sig, rows, sizes):
        users.append(cand.user + offset)
        items.append(cand.item)
        ranks.append(cand.ranks)
        scores.append(cand.scores)
        xs.append(x)
        offset += len(batch_rows)
    n_src, n_feat = len(SOURCES), len(feature_names())

    def cat(parts: list, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts) if parts else empty

    return Pool(rows, Candidates(cat(users, np.empty(0, "int64")),
                                    cat(items, np.empty(0, "int64")),
                                    cat(ranks, np.empty((0, n_src), "int32")),
                                    cat(scores, np.empty((0, n_src), "float32"))),
                cat(xs, np.empty((0, n_feat), "float32")))


def pool_labels(sig: Signals, pool: Pool, labels: pd.DataFrame) -> np.ndarray:
    """Per candidate of ``pool``: whether (user, item) is a pair of ``labels``."""
    u = pd.Index(sig.user_ids).get_indexer(labels["user_id"].to_numpy())
    i = pd.Index(sig.item_ids).get_indexer(labels["item_id"].to_numpy())
    ok = (u >= 0) & (i >= 0)
    truth = np.unique(u[ok].astype("int64") * sig.n_items + i[ok])
    key = pool.rows[pool.cand.user].astype("int64") * sig.n_items + pool.cand.item
    return np.isin(key, truth)


def _subset(user: np.ndarray, keep_users: np.ndarray) -> np.ndarray:
    """Candidate positions of the users in ``keep_users`` (positions into pool rows)."""
    return np.flatnonzero(np.isin(user, keep_users))


def _capacities(cfg: rk.RankerConfig, with_linear: bool) -> list[rk.RankerConfig]:
    """The configured ranker and, to compare on validation users, a linear one."""
    from dataclasses import replace

    if not with_linear or cfg.hidden == ():
        return [cfg]
    return [cfg, replace(cfg, hidden=())]


def crossfit_ranker(pool: Pool, y: np.ndarray, config: FunnelConfig, folds: int,
                    validation: float = 0.2,
                    log_epoch: Callable[[dict], None] | None = None
                    ) -> tuple[rk.RankerSet, np.ndarray, dict]:
    """Cross-fitted ranker over the users of ``pool`` (labels ``y``).

    Users are split into ``folds`` seeded folds; the ranker of fold f trains on the other
    folds' users (a ``validation`` share of them held out for early stopping) and scores
    fold f's users, so every user gets a score from a ranker that never saw that user's
    labels (the out-of-fold scores, returned). In each fold two capacities are trained,
    the configured MLP and a linear scorer (``hidden=()``), and the one with the higher
    NDCG@10 on that fold's validation users is kept (a few users favour the linear one,
    many the MLP; the choice never reads the fold's own scored users). The published
    ranker averages the fold rankers' scores. All share one standardisation (the pool's
    feature means and deviations: no label enters it).
    """
    if folds < 2:
        raise ValueError(f"folds={folds}: the cross-fit needs at least 2")
    t0 = time.perf_counter()
    user = pool.cand.user
    n_users = len(pool.rows)
    rng = np.random.default_rng(config.ranker.seed)
    fold_of = rng.permutation(n_users) % folds
    scale = rk.scaling(pool.x) if len(pool.x) else None
    oof = np.zeros(len(user), "float32")
    rankers, val_info = [], []
    names = feature_names()
    for f in range(folds):
        test_users = np.flatnonzero(fold_of == f)
        rest = np.flatnonzero(fold_of != f)
        rest = rest[rng.permutation(len(rest))]
        n_val = int(round(validation * len(rest)))
        val_users, fit_users = np.sort(rest[:n_val]), np.sort(rest[n_val:])
        fit, val = _subset(user, fit_users), _subset(user, val_users)
        val_set = (pool.x[val], user[val], y[val]) if len(val) else None
        tried = {}
        for cfg in _capacities(config.ranker, with_linear=val_set is not None):
            model = rk.train(pool.x[fit], user[fit], y[fit], names, cfg, log=log_epoch,
                             val=val_set, scale=scale)
            v = rk.ndcg_at(model.score(val_set[0]), val_set[1], val_set[2]) \
                if val_set is not None else 0.0
            tried[cfg.hidden] = (v, model)
        hidden = max(tried, key=lambda h: (tried[h][0], len(h)))  # ties: the MLP
        model = tried[hidden][1]
        idx = _subset(user, test_users)
        oof[idx] = model.score(pool.x[idx])
        rankers.append(model)
        best = [e for e in model.log if "best_epoch" in e]
        val_info.append({"fold": f + 1, "train_users": int(len(fit_users)),
                         "validation_users": int(len(val_users)),
                         "scored_users": int(len(test_users)),
                         "hidden": list(hidden),
                         "validation_ndcg@10": {str(list(h)): round(float(v), 5)
                                                for h, (v, _) in tried.items()},
                         "best_epochs": [e["best_epoch"] for e in best]})
    ranker = rk.RankerSet(rankers)
    with_pos = np.unique(user[y])
    info = {"folds": folds, "n_candidates": int(len(user)), "n_users": int(n_users),
            "users_with_positives": int(len(with_pos)),
            "candidates_per_user": round(len(user) / max(n_users, 1), 1),
            "positives": int(y.sum()), "fold_training": val_info,
            "train_seconds": round(time.perf_counter() - t0, 1)}
    log.info("ranker: %s", info)
    return ranker, oof, info


@dataclass
class Ranked:
    """Per user (rows of ``users``): candidates sorted by ranker score, best first."""

    users: np.ndarray
    items: list[np.ndarray]
    scores: list[np.ndarray]
    source: list[np.ndarray]  # per item: index into SOURCES of its best-placed generator


def rank_users(sig: Signals, users: np.ndarray, config: FunnelConfig,
               ranker: rk.Ranker | rk.RankerSet | None, keep: int = 300, by: str | None = None,
               timings: dict[str, float] | None = None) -> Ranked:
    """Score every candidate with ``ranker`` (or, with ``by``, one generator's own
    score: that generator alone, no features) and keep the best ``keep`` per user.
    ``timings``, when given, accumulates seconds per stage ('candidates', 'features',
    'ranker_score', 'sort_keep') and the number of candidates ('n_candidates').

    A user's list depends on that user alone: not on the users of its batch, nor on the
    machine's cores. Matrix products (BLAS) round differently with the number of
    threads, so they run on one thread here; parallelism comes from running batches of
    users side by side (Spark partitions, jobs/spark_funnel.py)."""
    from threadpoolctl import threadpool_limits

    items, scores, source = [], [], []
    col = None if by is None else SOURCES.index(by)
    sizes = config.sizes
    if col is not None:  # one generator alone proposes its own pool
        sizes = PoolSizes(**{s: (keep if s == by else 0) for s in SOURCES})
    width = pool_widths(sizes)
    clock = {} if timings is None else timings

    def tick(stage: str, since: float) -> float:
        now = time.perf_counter()
        clock[stage] = clock.get(stage, 0.0) + now - since
        return now

    with threadpool_limits(1):
        for a in range(0, len(users), USER_BATCH):
            rows = users[a:a + USER_BATCH]
            t = time.perf_counter()
            cand = generate(sig, rows, sizes)
            t = tick("candidates", t)
            clock["n_candidates"] = clock.get("n_candidates", 0) + len(cand.user)
            if col is None:
                x = features(sig, rows, cand)
                t = tick("features", t)
                s = score_per_user(ranker, x, cand.user, len(rows))
                t = tick("ranker_score", t)
            else:
                s = cand.scores[:, col]
            part = best_lists(cand, s, len(rows), keep, width)
            items += part.items
            scores += part.scores
            source += part.source
            tick("sort_keep", t)
    return Ranked(users, items, scores, source)


def score_per_user(ranker: rk.Ranker | rk.RankerSet, x: np.ndarray, user: np.ndarray,
                   n_users: int) -> np.ndarray:
    """The ranker's scores of candidates sorted by ``user``, one user's candidates per
    call: a matrix product rounds a row differently depending on the rows it comes with,
    and a user's scores must not depend on which users share its batch (a Spark
    partition or an in-process batch)."""
    out = np.empty(len(x), "float32")
    starts = np.searchsorted(user, np.arange(n_users + 1))
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b > a:
            out[a:b] = ranker.score(x[a:b])
    return out


def best_lists(cand: Candidates, s: np.ndarray, n_users: int, keep: int,
               width: np.ndarray, only: np.ndarray | None = None) -> Ranked:
    """Per user 0..n_users-1 of ``cand`` (sorted by user): the ``keep`` candidates with
    the highest ``s`` (ties: candidate order), each with its best-placed generator
    (rank over that generator's pool ``width``). ``only``: a mask of candidates allowed."""
    best = np.argmin(np.where(cand.ranks >= 0, cand.ranks / width, np.inf), axis=1)
    starts = np.searchsorted(cand.user, np.arange(n_users + 1))
    items, scores, source = [], [], []
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        order = lo + np.argsort(-s[lo:hi], kind="stable")
        if only is not None:
            order = order[only[order]]
        order = order[:keep]
        items.append(cand.item[order])
        scores.append(s[order].astype("float32"))
        source.append(best[order])
    return Ranked(np.arange(n_users), items, scores, source)


def pool_widths(sizes: PoolSizes) -> np.ndarray:
    """Each generator's pool size (at least 1), in :data:`SOURCES` order: the scale of its
    ranks when :func:`best_lists` picks an item's best-placed generator."""
    return np.maximum(np.array([sizes.get(n) for n in SOURCES]), 1)
