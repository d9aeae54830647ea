"""The two-stage funnel end to end: signals -> candidates -> learned ranking -> re-ranking.

Used by the daily DAG's ``evaluate`` and ``precompute`` steps, by nearline and by
``recs evaluate``:

* :func:`build_signals` puts the trained artefacts (ALS and two-tower vectors, Spark
  co-visitation, MiniLM text vectors) and the training pairs on one catalog;
* :func:`fit_artifacts` trains those artefacts in process (``recs evaluate``, tests);
* :func:`candidate_pool` / :func:`crossfit_ranker`: the ranker learns from the held-out
  users' candidates, labelled by their held-out pairs, each user scored out of fold;
* :func:`gate_table` scores popularity, every generator (alone and re-ranked), the
  ranker and the full pipeline on the same users; :func:`choose` picks what to publish;
* :func:`rank_users` scores every candidate of every user with the ranker (or one
  generator alone);
* :func:`final_lists` re-ranks (rules, diversity, freshness, no three of a category in a
  row) and gives every item its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models import features as ft
from models import generators as gn
from models import ranker as rk
from models import signals as sg
from models.rerank import RerankConfig, Rules, rerank

log = logging.getLogger("recs.funnel")
USER_BATCH = 256


@dataclass
class Artifacts:
    """Trained inputs of the funnel; any may be None (its generator is then off)."""

    als: object | None = None  # jobs.train_als.Factors
    two_tower: object | None = None  # Factors layout: user/item ids and vectors
    covisit: pd.DataFrame | None = None  # item_id, neighbour_id, score
    text_ids: np.ndarray | None = None
    text: np.ndarray | None = None  # (len(text_ids), d)


@dataclass(frozen=True)
class FunnelConfig:
    sizes: gn.PoolSizes = gn.PoolSizes()
    ease_lambda: float = 200.0
    ease_max_items: int = 20_000
    new_days: float = 14.0
    ranker: rk.RankerConfig = rk.RankerConfig()
    rerank: RerankConfig = RerankConfig(diversity=0.0, freshness_weight=0.0, max_run=2,
                                        popularity_penalty=0.1)


def read_preferences(users_path: str | None) -> dict[int, list[str]]:
    """Onboarding categories per user from the users snapshot's ``preferences`` JSON
    (``{"categories": ["Comedy", ...]}``); users without any are left out."""
    import json

    if not users_path:
        return {}
    users = pd.read_parquet(users_path)
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


def catalog_ids(pairs: pd.DataFrame, items: pd.DataFrame | None) -> np.ndarray:
    ids = pairs["item_id"].to_numpy("int64")
    if items is not None:
        ids = np.concatenate([ids, items["item_id"].to_numpy("int64")])
    return np.unique(ids)


def build_signals(pairs: pd.DataFrame, items: pd.DataFrame | None, art: Artifacts, *,
                  as_of: pd.Timestamp, config: FunnelConfig = FunnelConfig(),
                  users: np.ndarray | None = None,
                  preferences: dict[int, list[str]] | None = None,
                  countries: pd.Series | None = None) -> sg.Signals:
    """Signals over the catalog (paired items and the items snapshot) for ``users``
    (default: every user of ``pairs``, plus those with onboarding ``preferences``).
    ``countries``: country code by user id (the ``country`` generator)."""
    from models import popularity as pop

    item_ids = catalog_ids(pairs, items)
    if users is None:
        users = np.unique(np.concatenate([pairs["user_id"].to_numpy("int64"),
                                          np.fromiter((preferences or {}).keys(), "int64")]))
    hist, weight = sg.histories(pairs, users, item_ids)
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
    user_row = pd.Index(users).get_indexer(pairs["user_id"].to_numpy())
    prefs = {}
    for uid, wanted in (preferences or {}).items():
        r = pd.Index(users).get_indexer([uid])[0]
        c = pd.Index(names).get_indexer(list(wanted))
        if r >= 0 and (c >= 0).any():
            prefs[int(r)] = c[c >= 0]
    sig = sg.Signals(
        user_ids=users, item_ids=item_ids, history=hist, history_weight=weight,
        category=code.astype("int64"), category_names=names,
        popularity=counts.to_numpy("float32"), trending=trending.astype("float32"),
        age_days=np.maximum(age, 0.0), new_days=config.new_days,
        item_hours=sg.hour_profile(item_row, pairs["timestamp"], len(item_ids)),
        user_hours=sg.hour_profile(user_row, pairs["timestamp"], len(users)),
        preferences=prefs)
    if countries is not None and countries.notna().any():
        country = countries.dropna().astype(str)
        sig.country_names = tuple(sorted(country.unique()))
        sig.user_country = pd.Index(sig.country_names).get_indexer(
            country.reindex(users).to_numpy())
        per = np.zeros((len(sig.country_names), len(item_ids)), "float32")
        c_of_pair = pd.Index(sig.country_names).get_indexer(
            country.reindex(pairs["user_id"].to_numpy()).to_numpy())
        ok = (c_of_pair >= 0) & (item_row >= 0)
        np.add.at(per, (c_of_pair[ok], item_row[ok]), 1.0)
        sig.country_popularity = per / np.maximum(per.max(1, keepdims=True), 1.0)
    if art.als is not None:
        sig.als_users = sg.align_rows(art.als.user_ids, art.als.user_factors, users)
        sig.als_items = sg.align_rows(art.als.item_ids, art.als.item_factors, item_ids)
    if art.two_tower is not None:
        sig.tt_users = sg.align_rows(art.two_tower.user_ids, art.two_tower.user_factors,
                                     users)
        sig.tt_items = sg.align_rows(art.two_tower.item_ids, art.two_tower.item_factors,
                                     item_ids)
    if art.text is not None:
        sig.text = sg.unit_rows(sg.align_rows(art.text_ids, art.text, item_ids))
    if art.covisit is not None:
        sig.covisit = sg.covisit_matrix(art.covisit, item_ids)
    if config.ease_max_items > 0:
        sig.ease, sig.itemknn = sg.item_item(pairs, item_ids, config.ease_lambda,
                                             config.ease_max_items)
    return sig


def fit_artifacts(pairs: pd.DataFrame, items: pd.DataFrame, *, spark, settings,
                  text: tuple[np.ndarray, np.ndarray] | None = None) -> Artifacts:
    """Train ALS, the two-tower model and co-visitation on ``pairs`` in this process."""
    from jobs import covisit, train_als
    from jobs.train_two_tower import catalog
    from models import two_tower as tt

    t0 = time.perf_counter()
    params = train_als.AlsParams(settings.als_rank, settings.als_reg, settings.als_alpha,
                                 settings.als_iters, settings.seed)
    als = train_als.train(spark, pairs, params)
    t1 = time.perf_counter()
    cat = catalog(items, pairs)
    vectors = None
    if text is not None:
        vectors = sg.align_rows(text[0], text[1], cat["item_id"].to_numpy())
    model, item_feats, user_feats = tt.fit(pairs, cat, settings.two_tower_config(),
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


# --- Candidates, features and the ranker ------------------------------------------------


def candidate_batches(sig: sg.Signals, users: np.ndarray, sizes: gn.PoolSizes,
                      batch: int = USER_BATCH):
    """Yield (user rows, Candidates with user = positions into those rows, features)."""
    for a in range(0, len(users), batch):
        rows = users[a:a + batch]
        cand = gn.generate(sig, rows, sizes)
        yield rows, cand, ft.features(sig, rows, cand)


@dataclass
class Pool:
    """Every candidate of ``rows`` (user rows) with its features, sorted by user:
    ``cand.user`` indexes ``rows``."""

    rows: np.ndarray
    cand: gn.Candidates
    x: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.searchsorted(self.cand.user, np.arange(len(self.rows) + 1))


def candidate_pool(sig: sg.Signals, rows: np.ndarray, sizes: gn.PoolSizes) -> Pool:
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
    n_src, n_feat = len(gn.SOURCES), len(ft.feature_names())

    def cat(parts: list, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts) if parts else empty

    return Pool(rows, gn.Candidates(cat(users, np.empty(0, "int64")),
                                    cat(items, np.empty(0, "int64")),
                                    cat(ranks, np.empty((0, n_src), "int32")),
                                    cat(scores, np.empty((0, n_src), "float32"))),
                cat(xs, np.empty((0, n_feat), "float32")))


def pool_labels(sig: sg.Signals, pool: Pool, labels: pd.DataFrame) -> np.ndarray:
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
    names = ft.feature_names()
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


def rank_users(sig: sg.Signals, users: np.ndarray, config: FunnelConfig,
               ranker: rk.Ranker | rk.RankerSet | None, keep: int = 300, by: str | None = None,
               timings: dict[str, float] | None = None) -> Ranked:
    """Score every candidate with ``ranker`` (or, with ``by``, one generator's own
    score: that generator alone, no features) and keep the best ``keep`` per user.
    ``timings``, when given, accumulates seconds per stage ('candidates', 'features',
    'ranker_score', 'sort_keep') and the number of candidates ('n_candidates')."""
    items, scores, source = [], [], []
    col = None if by is None else gn.SOURCES.index(by)
    sizes = config.sizes
    if col is not None:  # one generator alone proposes its own pool
        sizes = gn.PoolSizes(**{s: (keep if s == by else 0) for s in gn.SOURCES})
    width = pool_widths(sizes)
    clock = {} if timings is None else timings

    def tick(stage: str, since: float) -> float:
        now = time.perf_counter()
        clock[stage] = clock.get(stage, 0.0) + now - since
        return now

    for a in range(0, len(users), USER_BATCH):
        rows = users[a:a + USER_BATCH]
        t = time.perf_counter()
        cand = gn.generate(sig, rows, sizes)
        t = tick("candidates", t)
        clock["n_candidates"] = clock.get("n_candidates", 0) + len(cand.user)
        if col is None:
            x = ft.features(sig, rows, cand)
            t = tick("features", t)
            s = ranker.score(x)
            t = tick("ranker_score", t)
        else:
            s = cand.scores[:, col]
        part = best_lists(cand, s, len(rows), keep, width)
        items += part.items
        scores += part.scores
        source += part.source
        tick("sort_keep", t)
    return Ranked(users, items, scores, source)


def best_lists(cand: gn.Candidates, s: np.ndarray, n_users: int, keep: int,
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


def pool_widths(sizes: gn.PoolSizes) -> np.ndarray:
    return np.maximum(np.array([sizes.get(n) for n in gn.SOURCES]), 1)


# --- Re-ranking and reasons ---------------------------------------------------------------


def reason_for(sig: sg.Signals, user: int, item: int, source: int,
               titles, sim: np.ndarray | None) -> tuple[str, int]:
    """(reason, reason_item_id or -1) for one recommended item."""
    if source < 0:
        return "Featured", -1
    name = gn.SOURCES[source]
    cat = sig.category[item]
    cat_name = sig.category_names[cat] if cat >= 0 else None
    hist = sig.history[user]
    if name == "trending" and cat_name:
        return f"Trending in {cat_name}", -1
    if name == "new" and cat_name:
        return f"New in {cat_name}", -1
    if name == "country" and sig.user_country is not None and sig.user_country[user] >= 0:
        return f"Popular in {sig.country_names[sig.user_country[user]]}", -1
    if len(hist) and sim is not None and sim.max() > 0:
        best = int(hist[int(np.argmax(sim))])
        iid = int(sig.item_ids[best])
        title = titles.get(iid, str(iid))
        if name == "text":
            return f"Similar to {title}", iid
        return f"Because you watched {title}", iid
    if name == "trending":
        return "Trending now", -1
    return "Recommended for you", -1


def history_similarity(sig: sg.Signals, user: int, items: np.ndarray,
                       source: np.ndarray) -> list[np.ndarray | None]:
    """Per item: its similarity to each history item (the measure behind its reason):
    text cosine for text picks, else co-visitation plus 1e-3 x ALS cosine (text cosine
    for an item without an ALS vector), which breaks ties and zeros."""
    hist = sig.history[user]
    if not len(hist):
        return [None] * len(items)
    unit_als = sig.als_unit
    co = sig.covisit[hist][:, items].toarray().T if sig.covisit is not None else \
        np.zeros((len(items), len(hist)), "float32")
    als = unit_als[items] @ unit_als[hist].T if unit_als is not None else None
    txt = sig.text[items] @ sig.text[hist].T if sig.text is not None else None
    out = []
    for n, (item, src) in enumerate(zip(items, source, strict=True)):
        if src >= 0 and gn.SOURCES[src] == "text" and txt is not None:
            out.append(txt[n])
            continue
        s = co[n].astype("float32")
        if als is not None and unit_als[item].any():
            s = s + 1e-3 * als[n]
        elif txt is not None:
            s = s + 1e-3 * txt[n]
        out.append(s)
    return out


def final_lists(sig: sg.Signals, ranked: Ranked, titles: pd.Series, k: int, *,
                config: RerankConfig, rules: Rules = Rules(), with_reasons: bool = True
                ) -> pd.DataFrame:
    """Re-ranked top ``k`` per user with reasons: the published list layout."""
    cats = [sig.category_names[c] if c >= 0 else None for c in sig.category]
    pin_rows = pd.Index(sig.item_ids).get_indexer(list(rules.pins))
    pin_rows = pin_rows[pin_rows >= 0]
    titles = titles[~titles.index.duplicated()].to_dict()
    records = []
    for n, u in enumerate(ranked.users):
        items, scores, source = ranked.items[n], ranked.scores[n], ranked.source[n]
        extra = pin_rows[~np.isin(pin_rows, items)]
        if len(extra):  # a pinned item goes into every list, found by a generator or not
            items = np.concatenate([items, extra])
            scores = np.concatenate([scores, np.full(len(extra), -np.inf, "float32")])
            source = np.concatenate([source, np.full(len(extra), -1)])
        vectors = sig.text[items] if sig.text is not None and config.diversity else None
        pos = rerank(sig.item_ids[items], scores, [cats[i] for i in items], k,
                     config=config, rules=rules, vectors=vectors,
                     age_days=sig.age_days[items],
                     consumed=frozenset(sig.item_ids[sig.history[u]].tolist()),
                     popularity=sig.popularity[items])
        items, scores, source = items[pos], scores[pos], source[pos]
        if with_reasons:
            sims = history_similarity(sig, u, items, source)
            why = [reason_for(sig, u, i, s, titles, m)
                   for i, s, m in zip(items, source, sims, strict=True)]
        else:
            why = [("", -1)] * len(items)
        records.append((int(sig.user_ids[u]), sig.item_ids[items].astype("int64"),
                        scores.astype("float32"), [w[0] for w in why],
                        np.array([w[1] for w in why], "int64"),
                        [gn.SOURCES[s] if s >= 0 else "pin" for s in source],
                        sig.item_ids[sig.history[u][:10]].astype("int64")))
    return pd.DataFrame(records, columns=["user_id", "items", "scores", "reasons",
                                          "reason_item_ids", "sources", "history_tail"])


# --- Evaluation ---------------------------------------------------------------------------

K = 10


def _frame(user_ids: np.ndarray, items: list[np.ndarray]) -> pd.DataFrame:
    """Ranked lists as (user_id, item_id, score) rows, score = descending positions."""
    n = np.array([len(i) for i in items])
    return pd.DataFrame({"user_id": np.repeat(user_ids, n),
                         "item_id": np.concatenate(items) if len(items) else [],
                         "score": np.concatenate([np.arange(len(i), 0, -1) for i in items])
                         if len(items) else []})


def generator_lists(pool: Pool, source: str, keep: int, sizes: gn.PoolSizes) -> Ranked:
    """One generator alone: its own pool among the candidates, in its own order."""
    j = gn.SOURCES.index(source)
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


def gate_table(sig: sg.Signals, config: FunnelConfig, train: pd.DataFrame,
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
    from jobs.evaluate import named, popularity_predictions
    from models.metrics import evaluate_all

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
    for source in gn.SOURCES:
        j = gn.SOURCES.index(source)
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
