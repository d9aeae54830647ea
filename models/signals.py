"""The funnel's signals: everything the generators and the features read (pure compute).

Every signal lives on one catalog (``Signals.item_ids``, rows 0..n-1) and one user set
(``Signals.user_ids``): the users' histories, item categories, popularity, trending and
age, time-of-day profiles, onboarding preferences and countries, the trained vectors (ALS,
two-tower, MiniLM text) and the item-item views (EASE, co-occurrence cosine,
co-visitation). models/funnel.py:build_signals assembles them; models/generators.py
proposes candidates from them and models/features.py describes each candidate with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

HOUR_BUCKETS = 4


@dataclass
class Signals:
    """Everything the generators and the features read, aligned on catalog rows.

    Vectors are None where a signal is unavailable (for example EASE above its item
    limit); that generator then proposes nothing and its features are 0.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    history: list[np.ndarray]  # per user: item rows, newest first
    history_weight: list[np.ndarray]  # per user: pair weights, same order
    category: np.ndarray  # per item: category code (-1: none)
    category_names: tuple[str, ...]
    popularity: np.ndarray  # per item: interactions in the training pairs
    trending: np.ndarray  # per item: trending score (0: not trending)
    age_days: np.ndarray  # per item: days since it appeared (first event or created_at)
    item_hours: np.ndarray  # per item: share of its events per time-of-day bucket
    user_hours: np.ndarray  # per user: share of the user's events per bucket
    als_users: np.ndarray | None = None
    als_items: np.ndarray | None = None
    tt_users: np.ndarray | None = None
    tt_items: np.ndarray | None = None
    ease: np.ndarray | None = None  # (n_items, n_items) EASE weights
    itemknn: np.ndarray | None = None  # (n_items, n_items) co-occurrence cosine
    covisit: sp.csr_matrix | None = None  # (n_items, n_items) co-visitation scores
    text: np.ndarray | None = None  # (n_items, d) unit text vectors
    preferences: dict[int, np.ndarray] = field(default_factory=dict)  # user row -> cats
    user_country: np.ndarray | None = None  # per user: row of country_names (-1: none)
    country_names: tuple[str, ...] = ()
    country_popularity: np.ndarray | None = None  # (n_countries, n_items), max 1 per row
    new_days: float = 14.0
    exact_max: int = 50_000  # vector indices are exact up to this many items, HNSW above
    retrieval: object | None = None  # models.generators.ItemSide, built on first use

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def als_unit(self) -> np.ndarray | None:
        """Unit-length ALS item vectors (zero rows stay zero), computed once: the
        nearest-history features and the reasons read ALS cosines."""
        return None if self.als_items is None else unit_rows(self.als_items)


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` scaled to unit length; all-zero rows stay zero."""
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n == 0, 1.0, n)


def align_rows(ids: np.ndarray, vectors: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` (keyed by ``ids``) in the order of ``on``; zeros where absent."""
    out = np.zeros((len(on), vectors.shape[1]), "float32")
    pos = pd.Index(ids).get_indexer(on)
    out[pos >= 0] = vectors[pos[pos >= 0]]
    return out


# --- Signals from training data --------------------------------------------------------


def item_item(pairs: pd.DataFrame, item_ids: np.ndarray, lam: float = 200.0,
              max_items: int = 20_000) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(EASE weights, co-occurrence cosine), both dense (n_items, n_items) from the Gram
    matrix G = X^T X of the binary user x item matrix X of ``pairs``.

    EASE (Steck 2019): B = I - P / diag(P), P = (G + lam I)^-1, diag(B) = 0. Cosine:
    G_ij / sqrt(G_ii G_jj), diagonal 0. (None, None) when the catalog has more than
    ``max_items`` items (both are n^2 floats).

    G + lam I is symmetric positive definite, so P comes from its Cholesky factor
    (LAPACK potrf/potri) in float32: about 5x faster than a float64 LU inverse on 9,700
    items, B within 1e-6 of it relative to B's largest weight (lam >= 1 bounds the
    condition number); both are float32 in the end.
    """
    from scipy.linalg import lapack

    n = len(item_ids)
    if n > max_items:
        return None, None
    if lam <= 0:
        raise ValueError(f"EASE lambda must be > 0, got {lam}")
    x = interaction_matrix(pairs, np.unique(pairs["user_id"].to_numpy()), item_ids)
    gram = np.ascontiguousarray((x.T @ x).toarray(), dtype="float32")  # row-major
    d = np.sqrt(np.diag(gram)).copy()
    d[d == 0] = 1.0
    cos = gram / d[:, None]
    cos /= d[None, :]
    np.fill_diagonal(cos, 0.0)
    gram[np.diag_indices(n)] += lam
    factor, info = lapack.spotrf(gram, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info {info})")
    p, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (info {info})")
    p = np.triu(p)
    p += np.triu(p, 1).T  # potri fills the upper triangle only
    b = p / -np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return np.ascontiguousarray(b, dtype="float32"), np.ascontiguousarray(cos)


def interaction_matrix(pairs: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                       binary: bool = True) -> sp.csr_matrix:
    """Users x items CSR of ``pairs`` (ids outside the given sets are dropped)."""
    u = pd.Index(user_ids).get_indexer(pairs["user_id"].to_numpy())
    i = pd.Index(item_ids).get_indexer(pairs["item_id"].to_numpy())
    keep = (u >= 0) & (i >= 0)
    vals = np.ones(keep.sum(), "float32") if binary else \
        pairs["weight"].to_numpy("float32")[keep]
    m = sp.csr_matrix((vals, (u[keep], i[keep])), shape=(len(user_ids), len(item_ids)))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def covisit_matrix(neighbours: pd.DataFrame, item_ids: np.ndarray) -> sp.csr_matrix:
    """Item x item CSR from jobs/covisit.py's (item_id, neighbour_id, score) rows."""
    idx = pd.Index(item_ids)
    a = idx.get_indexer(neighbours["item_id"].to_numpy())
    b = idx.get_indexer(neighbours["neighbour_id"].to_numpy())
    keep = (a >= 0) & (b >= 0)
    n = len(item_ids)
    return sp.csr_matrix((neighbours["score"].to_numpy("float32")[keep], (a[keep], b[keep])),
                         shape=(n, n))


def histories(pairs: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user: (item rows, weights), newest first (ties by item id)."""
    f = pd.DataFrame({"u": pd.Index(user_ids).get_indexer(pairs["user_id"].to_numpy()),
                      "i": pd.Index(item_ids).get_indexer(pairs["item_id"].to_numpy()),
                      "w": pairs["weight"].to_numpy("float32"),
                      "t": pairs["timestamp"].to_numpy()})
    f = f[(f.u >= 0) & (f.i >= 0)].sort_values(["u", "t", "i"], ascending=[True, False, True],
                                                kind="stable")
    bounds = np.searchsorted(f.u.to_numpy(), np.arange(len(user_ids) + 1))
    rows, w = f.i.to_numpy("int64"), f.w.to_numpy("float32")
    return ([rows[bounds[k]:bounds[k + 1]] for k in range(len(user_ids))],
            [w[bounds[k]:bounds[k + 1]] for k in range(len(user_ids))])


def hour_profile(keys: np.ndarray, timestamps: pd.Series, n: int) -> np.ndarray:
    """(n, HOUR_BUCKETS) share of events per 6-hour bucket of the day, per key row."""
    hours = pd.to_datetime(timestamps, utc=True).dt.hour.to_numpy() // (24 // HOUR_BUCKETS)
    out = np.zeros((n, HOUR_BUCKETS), "float32")
    ok = keys >= 0
    np.add.at(out, (keys[ok], hours[ok]), 1.0)
    return out / np.maximum(out.sum(1, keepdims=True), 1.0)


# --- Per-user views ----------------------------------------------------------------------


def category_column(sig: Signals) -> np.ndarray:
    """Category code per item, with 'none' mapped to the extra last column."""
    return np.where(sig.category >= 0, sig.category, len(sig.category_names))


def category_affinity(sig: Signals, users: np.ndarray) -> np.ndarray:
    """(len(users), n_categories + 1): share of each category in the user's history,
    or equal shares of the onboarding categories for a user without history, or 1 for
    every category when neither is known."""
    n_cat = len(sig.category_names) + 1
    out = np.zeros((len(users), n_cat), "float32")
    col = category_column(sig)
    for r, u in enumerate(users):
        h = sig.history[u]
        if len(h):
            out[r] = np.bincount(col[h], minlength=n_cat) / len(h)
        elif u in sig.preferences and len(sig.preferences[u]):
            out[r, sig.preferences[u]] = 1.0 / len(sig.preferences[u])
    out[:, -1] = 0.0  # "no category" is not a taste
    out[out.sum(1) == 0] = 1.0  # no taste known: every category alike (global trending)
    return out
