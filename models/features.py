"""Candidate features: what the ranker (models/ranker.py) reads (pure compute).

Every candidate gets every signal's score (not only the generator that found it),
per-user normalised (z-score and percentile among the user's candidates), plus the rank it
had in each generator, item popularity and age, the user's affinity to its category, a
time-of-day match, and how close the candidate is to the single nearest item of the
user's history under each item-item view (co-occurrence cosine, EASE weight,
co-visitation, text cosine, ALS cosine): a sum over the whole history hides one strong
match among many weak ones.
"""

from __future__ import annotations

import numpy as np

from models.generators import SOURCES, Candidates
from models.signals import Signals, category_affinity, category_column

NEAREST_HISTORY = 500  # the user's newest items behind the nearest-history features
NEAREST = ("itemknn", "ease", "covisit", "text", "als")  # item-item views of nearest-*


def feature_names() -> list[str]:
    """The columns of :func:`features`, in order."""
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
    aff = category_affinity(sig, users)[cand.user, category_column(sig)[cand.item]]
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
