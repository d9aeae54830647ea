"""Candidate generation and candidate features: stage 1 of the funnel (pure compute).

Every signal lives on one catalog (``Signals.item_ids``, rows 0..n-1) and one user set
(``Signals.user_ids``). Each generator proposes, per user, its best items not in the
user's history, with its own score:

* ``als``        ALS user vector x item vectors (collaborative);
* ``two_tower``  two-tower user vector x item vectors (collaborative + content);
* ``ease``       item-item linear autoencoder (closed-form EASE on the co-occurrence
                 Gram matrix) over the whole history;
* ``itemknn``    item-item cosine of co-occurrence over the whole history (the Gram
                 matrix EASE is solved from);
* ``covisit``    co-visitation (counted in Spark, jobs/covisit.py) of the user's recent
                 items;
* ``covisit_history`` the same co-visitation over the user's whole history (items
                 consumed around the time of any of the user's items);
* ``text``       MiniLM text similarity of items to the user's recent items;
* ``trending``   trending items of the user's categories (history or onboarding);
* ``country``    popular among the users of the user's country;
* ``new``        exploration: the newest items, those of the user's categories first.

The generators' lists are merged per user; every candidate then gets every signal's score
(not only the generator that found it), per-user normalised, plus the rank it had in each
generator, item popularity and age, the user's affinity to its category, a time-of-day
match, and how close the candidate is to the single nearest item of the user's history
under each item-item view (co-occurrence cosine, EASE weight, co-visitation, text cosine,
ALS cosine): a sum over the whole history hides one strong match among many weak ones.
Those are the ranker's features (models/ranker.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

SOURCES = ("als", "two_tower", "ease", "itemknn", "covisit", "covisit_history", "text",
           "trending", "country", "new")
RECENT = 20  # the user's newest items behind the covisit and text signals
NEAREST_HISTORY = 500  # the user's newest items behind the nearest-history features
NEAREST = ("itemknn", "ease", "covisit", "text", "als")  # item-item views of nearest-*
HOUR_BUCKETS = 4


@dataclass(frozen=True)
class PoolSizes:
    """How many candidates each generator proposes per user."""

    als: int = 300
    two_tower: int = 300
    ease: int = 300
    itemknn: int = 100
    covisit: int = 200
    covisit_history: int = 100
    text: int = 100
    trending: int = 50
    country: int = 20
    new: int = 20

    def get(self, source: str) -> int:
        return int(getattr(self, source))

    def total(self) -> int:
        return sum(self.get(s) for s in SOURCES)


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


# --- Generators ------------------------------------------------------------------------


def _top_excluding(scores: np.ndarray, exclude: Sequence[np.ndarray], n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per row of dense ``scores``: the best ``n`` columns not excluded. A score of exactly
    0 is "no evidence" (no vector, no co-visit, not trending): never a pick. Rows are -1
    past the last pick."""
    s = scores.astype("float32", copy=True)
    s[s == 0] = -np.inf
    for r, ex in enumerate(exclude):
        s[r, ex] = -np.inf
    n = min(n, s.shape[1])
    part = np.argpartition(-s, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    rows = np.take_along_axis(part, order, 1)
    vals = np.take_along_axis(s, rows, 1)
    rows = np.where(np.isfinite(vals), rows, -1)
    return rows, np.where(rows >= 0, vals, 0.0).astype("float32")


def signal_scores(sig: Signals, source: str, users: np.ndarray) -> np.ndarray | None:
    """Dense (len(users), n_items) scores of one signal, or None when it is missing."""
    if source == "als":
        return None if sig.als_users is None else sig.als_users[users] @ sig.als_items.T
    if source == "two_tower":
        return None if sig.tt_users is None else sig.tt_users[users] @ sig.tt_items.T
    if source == "ease":
        if sig.ease is None:
            return None
        return np.asarray(_history_matrix(sig, users, recent=None) @ sig.ease)
    if source == "itemknn":
        if sig.itemknn is None:
            return None
        return np.asarray(_history_matrix(sig, users, recent=None) @ sig.itemknn)
    if source == "covisit":
        if sig.covisit is None:
            return None
        return (_history_matrix(sig, users, recent=RECENT) @ sig.covisit).toarray()
    if source == "covisit_history":
        if sig.covisit is None:
            return None
        return (_history_matrix(sig, users, recent=0) @ sig.covisit).toarray()
    if source == "text":
        if sig.text is None:
            return None
        prof = _history_matrix(sig, users, recent=RECENT) @ sig.text
        prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-9)
        return prof @ sig.text.T
    if source == "trending":
        return category_affinity(sig, users)[:, _cat_col(sig)] * sig.trending[None, :]
    if source == "country":
        if sig.country_popularity is None:
            return None
        c = sig.user_country[users]
        out = sig.country_popularity[np.maximum(c, 0)].copy()
        out[c < 0] = 0.0
        return out
    if source == "new":
        fresh = np.exp(-sig.age_days / max(sig.new_days, 1e-9)).astype("float32")
        fresh[sig.age_days > sig.new_days] = 0.0
        aff = category_affinity(sig, users)[:, _cat_col(sig)]
        return fresh[None, :] * (0.5 + aff)
    raise ValueError(f"unknown source {source!r}")


def _history_matrix(sig: Signals, users: np.ndarray, recent: int | None) -> sp.csr_matrix:
    """Rows of the users' histories as a sparse matrix: 1 per item (``recent`` None), or
    the mean over the newest ``recent`` items (0: all), so that long histories do not
    dominate."""
    rows, cols, vals = [], [], []
    for r, u in enumerate(users):
        h = sig.history[u] if not recent else sig.history[u][:recent]
        rows.append(np.full(len(h), r))
        cols.append(h)
        vals.append(np.full(len(h), 1.0 if recent is None else 1.0 / max(len(h), 1),
                            "float32"))
    cat = np.concatenate
    return sp.csr_matrix((cat(vals) if vals else [], (cat(rows) if rows else [],
                                                        cat(cols) if cols else [])),
                         shape=(len(users), sig.n_items), dtype="float32")


def _cat_col(sig: Signals) -> np.ndarray:
    """Category code per item, with 'none' mapped to the extra last column."""
    return np.where(sig.category >= 0, sig.category, len(sig.category_names))


def category_affinity(sig: Signals, users: np.ndarray) -> np.ndarray:
    """(len(users), n_categories + 1): share of each category in the user's history,
    or equal shares of the onboarding categories for a user without history, or 1 for
    every category when neither is known."""
    n_cat = len(sig.category_names) + 1
    out = np.zeros((len(users), n_cat), "float32")
    col = _cat_col(sig)
    for r, u in enumerate(users):
        h = sig.history[u]
        if len(h):
            out[r] = np.bincount(col[h], minlength=n_cat) / len(h)
        elif u in sig.preferences and len(sig.preferences[u]):
            out[r, sig.preferences[u]] = 1.0 / len(sig.preferences[u])
    out[:, -1] = 0.0  # "no category" is not a taste
    out[out.sum(1) == 0] = 1.0  # no taste known: every category alike (global trending)
    return out


@dataclass
class Candidates:
    """Merged candidates in long form: one row per (user, item)."""

    user: np.ndarray  # rows into the users that were asked for
    item: np.ndarray  # catalog rows
    ranks: np.ndarray  # (m, n_sources) rank in each generator's list (0-based, -1: absent)
    scores: np.ndarray  # (m, n_sources) every signal's raw score


def generate(sig: Signals, users: np.ndarray, sizes: PoolSizes = PoolSizes()) -> Candidates:
    """Candidates for ``users`` (user rows) from every generator, merged and scored."""
    n_src = len(SOURCES)
    dense = {s: signal_scores(sig, s, users) for s in SOURCES}
    exclude = [sig.history[u] for u in users]
    keys, src_col, src_rank = [], [], []
    for j, source in enumerate(SOURCES):
        scores = dense[source]
        if scores is None or sizes.get(source) == 0:
            continue
        rows, _ = _top_excluding(scores, exclude, sizes.get(source))
        for r in range(len(users)):
            got = rows[r][rows[r] >= 0]
            keys.append(r * sig.n_items + got)
            src_col.append(np.full(len(got), j))
            src_rank.append(np.arange(len(got)))
    if not keys:
        empty = np.empty(0, "int64")
        return Candidates(empty, empty, np.empty((0, n_src)), np.empty((0, n_src)))
    key = np.concatenate(keys)
    uniq, inv = np.unique(key, return_inverse=True)
    ranks = np.full((len(uniq), n_src), -1, "int32")
    ranks[inv, np.concatenate(src_col)] = np.concatenate(src_rank)
    user, item = uniq // sig.n_items, uniq % sig.n_items
    scores = np.zeros((len(uniq), n_src), "float32")
    for j, source in enumerate(SOURCES):
        if dense[source] is not None:
            scores[:, j] = dense[source][user, item]
    return Candidates(user.astype("int64"), item.astype("int64"), ranks, scores)


# --- Features --------------------------------------------------------------------------


def feature_names() -> list[str]:
    names = []
    for s in SOURCES:
        names += [f"{s}_score", f"{s}_z", f"{s}_pct", f"{s}_rank"]
    return names + ["log_popularity", "popularity_pct", "log_age_days", "is_new",
                    "category_affinity", "log_user_history", "user_mainstream",
                    "hour_match", "n_sources", "itemknn_top3"] + \
        [f"{view}_nearest" for view in NEAREST]


def features(sig: Signals, users: np.ndarray, cand: Candidates) -> np.ndarray:
    """(m, len(feature_names())) float32 features of the candidates of ``users``."""
    m = len(cand.user)
    cols = []
    starts = np.searchsorted(cand.user, np.arange(len(users) + 1))  # cand sorted by user
    for j, _ in enumerate(SOURCES):
        s = cand.scores[:, j].astype("float64")
        z, pct = _per_user_norm(s, starts)
        r = cand.ranks[:, j]
        cols += [s, z, pct, np.log1p(np.where(r >= 0, r, 1000))]
    pop = sig.popularity[cand.item].astype("float64")
    _, pop_pct = _per_user_norm(np.log1p(pop), starts)
    age = sig.age_days[cand.item].astype("float64")
    aff = category_affinity(sig, users)[cand.user, _cat_col(sig)[cand.item]]
    hist_len = np.array([len(sig.history[u]) for u in users], "float64")[cand.user]
    # How mainstream the user's taste is: mean log popularity of the history's items.
    logpop = np.log1p(sig.popularity.astype("float64"))
    mainstream = np.array([logpop[sig.history[u]].mean() if len(sig.history[u]) else 0.0
                           for u in users])[cand.user]
    hour = np.einsum("ij,ij->i", sig.user_hours[users][cand.user], sig.item_hours[cand.item])
    cols += [np.log1p(pop), pop_pct, np.log1p(np.maximum(age, 0.0)),
             (age <= sig.new_days).astype("float64"), aff, np.log1p(hist_len), mainstream, hour,
             (cand.ranks >= 0).sum(1).astype("float64")]
    near = nearest_history(sig, users, cand)
    cols += [near[:, k].astype("float64") for k in range(near.shape[1])]
    out = np.column_stack(cols).astype("float32") if m else np.zeros((0, len(cols)), "float32")
    return out


def nearest_history(sig: Signals, users: np.ndarray, cand: Candidates) -> np.ndarray:
    """(m, 1 + len(NEAREST)): per candidate, the mean of its 3 highest co-occurrence
    cosines to the user's history items, then its highest similarity to any one of them
    under each view of :data:`NEAREST` (0 where the view is missing or the history empty).
    Reads the user's newest :data:`NEAREST_HISTORY` items; ``cand`` sorted by user."""
    out = np.zeros((len(cand.user), 1 + len(NEAREST)), "float32")
    starts = np.searchsorted(cand.user, np.arange(len(users) + 1))
    for r, u in enumerate(users):
        a, b = starts[r], starts[r + 1]
        h = sig.history[u][:NEAREST_HISTORY]
        if b <= a or not len(h):
            continue
        c = cand.item[a:b]
        if sig.itemknn is not None:
            knn = sig.itemknn[np.ix_(h, c)]
            out[a:b, 0] = np.sort(knn, axis=0)[-3:].mean(0)
            out[a:b, 1] = knn.max(0)
        if sig.ease is not None:
            out[a:b, 2] = sig.ease[np.ix_(h, c)].max(0)
        if sig.covisit is not None:
            out[a:b, 3] = sig.covisit[h][:, c].max(0).toarray().ravel()
        if sig.text is not None:
            out[a:b, 4] = (sig.text[h] @ sig.text[c].T).max(0)
        if sig.als_unit is not None:
            out[a:b, 5] = (sig.als_unit[h] @ sig.als_unit[c].T).max(0)
    return out


def _per_user_norm(x: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user z-score and percentile rank (0 worst .. 1 best) of ``x`` over each user's
    candidates (rows starts[u]:starts[u+1])."""
    z = np.zeros_like(x)
    pct = np.zeros_like(x)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b <= a:
            continue
        seg = x[a:b]
        sd = seg.std()
        z[a:b] = (seg - seg.mean()) / sd if sd > 0 else 0.0
        order = np.argsort(np.argsort(seg, kind="stable"), kind="stable")
        pct[a:b] = order / max(b - a - 1, 1)
    return z, pct
