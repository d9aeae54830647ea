"""Offline ranking metrics at k (pure compute: frames in, floats out).

Definitions follow Microsoft recommenders 1.2.1 ``recommenders/evaluation/python_evaluation.py``
with ``relevancy_method="top_k"`` and binary relevance (every row of ``rating_true`` is a
relevant item):

* users: only users present in BOTH ``rating_true`` and ``rating_pred`` count, and every
  mean divides by their number (``merge_ranking_true_pred``'s ``n_users``); a common user
  with no hit scores 0.
* ranking: ``rating_pred`` ranked per user by score descending, ties kept in frame order
  (a stable sort, as ``get_top_k_items``), the first ``k`` kept; rank 1 is the top.
* ``precision_at_k``: hits / k (a user with fewer than k predictions cannot reach 1).
* ``recall_at_k``: hits / n_relevant.
* ``ndcg_at_k``: DCG = sum over hits of 1 / log2(rank + 1); ideal DCG = the same sum over
  ranks 1..min(n_relevant, k). recommenders' default natural log gives the same ratio.
* ``mean_average_precision`` is recommenders' ``map``: sum over hits of
  (hits so far / rank), divided by n_relevant.
* ``map_at_k`` is recommenders' ``map_at_k``: the same sum divided by min(n_relevant, k).
* ``catalog_coverage``: distinct items in the top-k lists / catalog size.

Beyond-accuracy metrics, over every user of ``rating_pred`` (no ground truth involved):

* ``intra_list_diversity``: per user, the mean Jaccard distance 1 - |A & B| / |A | B| between
  the category sets of every pair of items in the top k; users with fewer than 2 items are
  skipped; the mean over the remaining users. An item missing from the category mapping, or
  with no categories, is its own unique category (distance 1 to every other item). This is
  recommenders' ``diversity`` (1 - mean intra-list similarity) with Jaccard over category
  sets as the item similarity instead of co-occurrence or cosine.
* ``novelty`` is recommenders' ``novelty`` over ``historical_item_novelty`` (Castells et al.,
  ECIR 2011, item choice model): an item's novelty is -log2(n_i / N), n_i the item's rows in
  ``train`` and N all rows of ``train``; the metric is the mean of that over every
  recommended (user, item) in the top-k lists.

Deviations from recommenders 1.2.1, for the record: duplicate (user, item) rows are
collapsed (the first, i.e. highest-scored, prediction kept) so a repeated test event
is one relevant item, not two hits; and recommenders' ``ndcg_at_k`` outer-joins the full
``rating_true`` and so averages over every test user, counting users absent from
``rating_pred`` as 0, whereas here it divides by the common users like the other
metrics. When every test user has predictions and pairs are unique, the values agree.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import numpy as np
import pandas as pd

from core.constants import DEFAULT_K, ITEM_COL, PREDICTION_COL, USER_COL

METRIC_KEYS: tuple[str, ...] = ("precision@k", "recall@k", "ndcg@k", "map", "map@k", "coverage")
DIVERSITY_KEY = "diversity@k"
"""Added by :func:`evaluate_all` after :data:`METRIC_KEYS` when ``item_categories`` is given."""
NOVELTY_KEY = "novelty@k"
"""Added by :func:`evaluate_all` after :data:`METRIC_KEYS` when ``train`` is given."""


class MetricsError(ValueError):
    """Metric inputs are malformed (missing column, bad k or catalog size)."""


def _check(df: pd.DataFrame, name: str, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MetricsError(f"{name}: missing column(s) {missing}; has {list(df.columns)}")


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetricsError(f"k={k!r}: expected an integer >= 1")
    return int(k)


def top_k(
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> pd.DataFrame:
    """Each user's k best-scored items with a 1-based ``rank`` column (ties: frame order)."""
    k = _check_k(k)
    _check(rating_pred, "rating_pred", (col_user, col_item, col_score))
    pred = rating_pred[[col_user, col_item, col_score]]
    # Multi-column sort_values is a stable lexsort: equal scores keep frame order.
    pred = pred.sort_values([col_user, col_score], ascending=[True, False])
    pred = pred.drop_duplicates([col_user, col_item], keep="first")
    rank = pred.groupby(col_user, sort=False).cumcount().to_numpy() + 1
    keep = rank <= k
    out = pred.loc[keep, [col_user, col_item]].reset_index(drop=True)
    out["rank"] = rank[keep]
    return out


def per_user(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> pd.DataFrame:
    """One row per common user: ``n_relevant``, ``hits``, ``dcg``, ``idcg``, ``ap_sum``.

    ``ap_sum`` is the sum over hits of precision at the hit's rank; the metrics below are
    means of ratios of these columns over all common users.
    """
    ranked = top_k(rating_pred, k, col_user=col_user, col_item=col_item, col_score=col_score)
    return _per_user_table(rating_true, ranked, k, col_user=col_user, col_item=col_item)


def _per_user_table(
    rating_true: pd.DataFrame, ranked: pd.DataFrame, k: int, *, col_user: str, col_item: str
) -> pd.DataFrame:
    """``per_user`` from the output of :func:`top_k` (which keeps every predicted user)."""
    _check(rating_true, "rating_true", (col_user, col_item))
    true = rating_true[[col_user, col_item]].drop_duplicates()
    common = pd.Index(true[col_user].unique()).intersection(ranked[col_user].unique())
    true = true[true[col_user].isin(common)]
    out = pd.DataFrame(true.groupby(col_user).size().rename("n_relevant"))
    hits = ranked.merge(true, on=[col_user, col_item], how="inner")
    hits = hits.sort_values([col_user, "rank"])
    ranks = hits["rank"].to_numpy(dtype=np.float64)
    hits["gain"] = 1.0 / np.log2(ranks + 1.0)
    hits["prec"] = (hits.groupby(col_user).cumcount().to_numpy() + 1) / ranks
    agg = hits.groupby(col_user).agg(
        hits=("rank", "size"), dcg=("gain", "sum"), ap_sum=("prec", "sum")
    )
    out = out.join(agg, how="left").fillna({"hits": 0, "dcg": 0.0, "ap_sum": 0.0})
    out["hits"] = out["hits"].astype(np.int64)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))
    out["idcg"] = ideal[np.minimum(out["n_relevant"].to_numpy(), k) - 1]
    return out[["n_relevant", "hits", "dcg", "idcg", "ap_sum"]]


def _reduce(users: pd.DataFrame, k: int) -> dict[str, float]:
    if len(users) == 0:
        return {"precision@k": 0.0, "recall@k": 0.0, "ndcg@k": 0.0, "map": 0.0, "map@k": 0.0}
    n_rel = users["n_relevant"].to_numpy(dtype=np.float64)
    hits = users["hits"].to_numpy(dtype=np.float64)
    ap = users["ap_sum"].to_numpy()
    return {
        "precision@k": float(np.mean(hits / k)),
        "recall@k": float(np.mean(hits / n_rel)),
        "ndcg@k": float(np.mean(users["dcg"].to_numpy() / users["idcg"].to_numpy())),
        "map": float(np.mean(ap / n_rel)),
        "map@k": float(np.mean(ap / np.minimum(n_rel, k))),
    }


def _metric(key: str, rating_true, rating_pred, k, cols) -> float:
    return _reduce(per_user(rating_true, rating_pred, k, **cols), k)[key]


def precision_at_k(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """Mean over common users of hits@k / k."""
    cols = {"col_user": col_user, "col_item": col_item, "col_score": col_score}
    return _metric("precision@k", rating_true, rating_pred, k, cols)


def recall_at_k(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """Mean over common users of hits@k / n_relevant."""
    cols = {"col_user": col_user, "col_item": col_item, "col_score": col_score}
    return _metric("recall@k", rating_true, rating_pred, k, cols)


def ndcg_at_k(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """Mean over common users of binary DCG@k / ideal DCG over min(n_relevant, k) ranks."""
    cols = {"col_user": col_user, "col_item": col_item, "col_score": col_score}
    return _metric("ndcg@k", rating_true, rating_pred, k, cols)


def mean_average_precision(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """recommenders' ``map``: per user, sum of precision at each hit in the top k / n_relevant."""
    cols = {"col_user": col_user, "col_item": col_item, "col_score": col_score}
    return _metric("map", rating_true, rating_pred, k, cols)


def map_at_k(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """recommenders' ``map_at_k``: the same sum divided by min(n_relevant, k)."""
    cols = {"col_user": col_user, "col_item": col_item, "col_score": col_score}
    return _metric("map@k", rating_true, rating_pred, k, cols)


def catalog_coverage(
    rating_pred: pd.DataFrame,
    n_catalog: int,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """Distinct items in every user's top k of ``rating_pred`` / ``n_catalog``."""
    _check_catalog(n_catalog)
    ranked = top_k(rating_pred, k, col_user=col_user, col_item=col_item, col_score=col_score)
    return _coverage(ranked, n_catalog, col_item)


def _check_catalog(n_catalog: int) -> None:
    if isinstance(n_catalog, bool) or not isinstance(n_catalog, int | np.integer) or n_catalog < 1:
        raise MetricsError(f"n_catalog={n_catalog!r}: expected an integer >= 1")


def _coverage(ranked: pd.DataFrame, n_catalog: int, col_item: str) -> float:
    n_items = ranked[col_item].nunique()
    if n_items > n_catalog:
        raise MetricsError(
            f"n_catalog={n_catalog} is smaller than the {n_items} distinct recommended items"
        )
    return n_items / int(n_catalog)


def intra_list_diversity(
    rating_pred: pd.DataFrame,
    item_categories: Mapping[Hashable, Iterable[str]],
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """Mean over users of the mean pairwise Jaccard distance of categories in the top k.

    ``item_categories`` maps item id -> its categories. An item missing from it or with no
    categories is its own unique category (distance 1 to every other item). Users with
    fewer than 2 items are skipped; 0.0 when no user has 2.
    """
    ranked = top_k(rating_pred, k, col_user=col_user, col_item=col_item, col_score=col_score)
    return _diversity(ranked, item_categories, col_user, col_item)


def _diversity(
    ranked: pd.DataFrame,
    item_categories: Mapping[Hashable, Iterable[str]],
    col_user: str,
    col_item: str,
) -> float:
    """:func:`intra_list_diversity` from the output of :func:`top_k`."""
    if not isinstance(item_categories, Mapping):
        raise MetricsError(
            f"item_categories: expected a mapping item -> categories, "
            f"got {type(item_categories).__name__}"
        )
    user_codes, _ = pd.factorize(ranked[col_user])
    item_codes, items = pd.factorize(ranked[col_item])
    if (user_codes < 0).any() or (item_codes < 0).any():
        raise MetricsError("rating_pred: null user or item ids in the top-k lists")
    order = np.argsort(user_codes, kind="stable")  # each user's items contiguous
    user_codes, item_codes = user_codes[order], item_codes[order]
    list_len = np.bincount(user_codes)
    starts = np.concatenate(([0], np.cumsum(list_len)[:-1]))

    # Every unordered pair (a, b) of positions within one user's list; owner = that user.
    pair_a, pair_b, owner = [], [], []
    for n in np.unique(list_len[list_len >= 2]):
        users = np.flatnonzero(list_len == n)
        ia, ib = np.triu_indices(int(n), 1)
        pair_a.append(item_codes[(starts[users][:, None] + ia).ravel()])
        pair_b.append(item_codes[(starts[users][:, None] + ib).ravel()])
        owner.append(np.repeat(users, len(ia)))
    if not owner:
        return 0.0
    a, b, owner = np.concatenate(pair_a), np.concatenate(pair_b), np.concatenate(owner)

    # Item -> category memberships as CSR-like arrays over the recommended items only.
    cat_code: dict[str, int] = {}
    member_item, member_cat = [], []
    for code, item in enumerate(items):
        cats = item_categories.get(item, ())
        if isinstance(cats, str | bytes):
            raise MetricsError(
                f"item_categories[{item!r}]={cats!r}: expected an iterable of category "
                f"names, not a single string"
            )
        for c in set(cats):
            member_item.append(code)
            member_cat.append(cat_code.setdefault(c, len(cat_code)))
    n_cat = max(len(cat_code), 1)
    member_key = np.asarray(member_item, dtype=np.int64) * n_cat
    member_key = np.sort(member_key + np.asarray(member_cat, dtype=np.int64))
    member_cat = member_key % n_cat  # sorted item-major: item i's categories are contiguous
    size = np.bincount(member_key // n_cat, minlength=len(items))
    first = np.concatenate(([0], np.cumsum(size)[:-1]))

    # |A & B|: each category of a, looked up among b's memberships.
    rep = np.repeat(np.arange(len(a)), size[a])
    pos = np.repeat(first[a] - np.cumsum(size[a]) + size[a], size[a]) + np.arange(len(rep))
    probe = b[rep] * n_cat + member_cat[pos]
    found = np.searchsorted(member_key, probe)
    hit = (found < len(member_key)) & (member_key[np.minimum(found, len(member_key) - 1)] == probe)
    inter = np.bincount(rep, weights=hit.astype(np.float64), minlength=len(a))
    union = size[a] + size[b] - inter
    # An empty set is a unique category of its own: distance 1, whatever the other item.
    empty = (size[a] == 0) | (size[b] == 0)
    dist = np.where(empty, 1.0, 1.0 - inter / np.where(empty, 1, union))

    n_users = len(list_len)
    n_pairs = np.bincount(owner, minlength=n_users)
    per_user = np.bincount(owner, weights=dist, minlength=n_users)
    return float(np.mean(per_user[n_pairs > 0] / n_pairs[n_pairs > 0]))


def novelty(
    train: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
) -> float:
    """recommenders' ``novelty``: mean over every recommended top-k (user, item) of the
    item's ``historical_item_novelty`` -log2(n_i / N).

    n_i is the number of rows of ``train`` with the item and N the number of rows of
    ``train`` (Castells et al. 2011, item choice model; rows are counted as given, so a
    repeated event counts twice). A recommended item absent from ``train`` is taken to have
    n_i = 1 (N unchanged), i.e. novelty log2(N); recommenders' inner merge instead drops
    it from the sum while keeping it in the denominator, i.e. novelty 0. 0.0 when
    ``rating_pred`` is empty.
    """
    ranked = top_k(rating_pred, k, col_user=col_user, col_item=col_item, col_score=col_score)
    return _novelty(train, ranked, col_user, col_item)


def _novelty(train: pd.DataFrame, ranked: pd.DataFrame, col_user: str, col_item: str) -> float:
    """:func:`novelty` from the output of :func:`top_k`."""
    _check(train, "train", (col_user, col_item))
    n_records = len(train)
    if n_records == 0:
        raise MetricsError("train: no rows; novelty needs training interactions")
    if len(ranked) == 0:
        return 0.0
    counts = train[col_item].value_counts(dropna=True)
    n_i = ranked[col_item].map(counts).fillna(1).to_numpy(dtype=np.float64)
    return float(np.mean(-np.log2(n_i / n_records)))


def evaluate_all(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = DEFAULT_K,
    n_catalog: int | None = None,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_score: str = PREDICTION_COL,
    item_categories: Mapping[Hashable, Iterable[str]] | None = None,
    train: pd.DataFrame | None = None,
) -> dict[str, float]:
    """All metrics at k in one pass, keyed as :data:`METRIC_KEYS`.

    ``n_catalog=None`` takes the catalog to be the distinct items seen in ``rating_true``
    and ``rating_pred`` together (a lower bound, so coverage is then an upper bound).
    With ``item_categories``, :data:`DIVERSITY_KEY` (:func:`intra_list_diversity`) follows;
    with ``train``, :data:`NOVELTY_KEY` (:func:`novelty`). Both are over every user of
    ``rating_pred``, as coverage is.
    """
    ranked = top_k(rating_pred, k, col_user=col_user, col_item=col_item, col_score=col_score)
    users = _per_user_table(rating_true, ranked, k, col_user=col_user, col_item=col_item)
    result = _reduce(users, k)
    if n_catalog is None:
        seen = pd.concat([rating_true[col_item], rating_pred[col_item]], ignore_index=True)
        n_catalog = max(int(seen.nunique()), 1)
    _check_catalog(n_catalog)
    result["coverage"] = _coverage(ranked, n_catalog, col_item)
    out = {key: result[key] for key in METRIC_KEYS}
    if item_categories is not None:
        out[DIVERSITY_KEY] = _diversity(ranked, item_categories, col_user, col_item)
    if train is not None:
        out[NOVELTY_KEY] = _novelty(train, ranked, col_user, col_item)
    return out


def named(metrics: dict[str, float], k: int) -> dict[str, float]:
    """``ndcg@k`` -> ``ndcg@10``: the cut-off written into each key (values rounded to 6
    places), as the gate records them."""
    return {key.replace("@k", f"@{k}"): round(float(v), 6) for key, v in metrics.items()}
