"""Candidate generators: stage 1 of the funnel (pure compute).

Each generator proposes, per user, its best items not in the user's history, with its own
score. A generator is one small function registered under its source name
(:func:`generator`); it returns the dense (users x catalog) scores of its signal, or None
when that signal is missing (the generator is then off):

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

:func:`generate` merges the generators' lists per user into :class:`Candidates`: every
candidate gets every signal's raw score (not only the generator that found it) and the
rank it had in each generator's list; models/features.py turns those into the ranker's
features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.signals import Signals, category_affinity, category_column

# The generators, in the order of the candidates' and the features' columns (a saved
# ranker's input layout): a new generator goes at the end.
SOURCES = ("als", "two_tower", "ease", "itemknn", "covisit", "covisit_history", "text",
           "trending", "country", "new")
RECENT = 20  # the user's newest items behind the covisit and text signals


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


# --- The generators, one per source ------------------------------------------------------

Scorer = Callable[[Signals, np.ndarray], np.ndarray | None]
GENERATORS: dict[str, Scorer] = {}


def generator(source: str) -> Callable[[Scorer], Scorer]:
    """Register ``fn(sig, users) -> dense (len(users), n_items) scores or None`` as the
    generator of ``source`` (one of :data:`SOURCES`)."""
    def register(fn: Scorer) -> Scorer:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}: add it to SOURCES first")
        if source in GENERATORS:
            raise ValueError(f"source {source!r} already has a generator")
        GENERATORS[source] = fn
        return fn
    return register


@generator("als")
def als_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """ALS user vector x item vectors."""
    return None if sig.als_users is None else sig.als_users[users] @ sig.als_items.T


@generator("two_tower")
def two_tower_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Two-tower user vector x item vectors."""
    return None if sig.tt_users is None else sig.tt_users[users] @ sig.tt_items.T


@generator("ease")
def ease_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """EASE weights summed over the user's whole history."""
    if sig.ease is None:
        return None
    return np.asarray(_history_matrix(sig, users, recent=None) @ sig.ease)


@generator("itemknn")
def itemknn_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Co-occurrence cosine summed over the user's whole history."""
    if sig.itemknn is None:
        return None
    return np.asarray(_history_matrix(sig, users, recent=None) @ sig.itemknn)


@generator("covisit")
def covisit_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Co-visitation, averaged over the user's newest :data:`RECENT` items."""
    if sig.covisit is None:
        return None
    return (_history_matrix(sig, users, recent=RECENT) @ sig.covisit).toarray()


@generator("covisit_history")
def covisit_history_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Co-visitation, averaged over the user's whole history."""
    if sig.covisit is None:
        return None
    return (_history_matrix(sig, users, recent=0) @ sig.covisit).toarray()


@generator("text")
def text_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Text cosine of each item to the user's profile: the mean text vector of
    the newest :data:`RECENT` items, scaled to unit length."""
    if sig.text is None:
        return None
    prof = _history_matrix(sig, users, recent=RECENT) @ sig.text
    prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-9)
    return prof @ sig.text.T


@generator("trending")
def trending_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Trending score x the user's affinity to the item's category."""
    return category_affinity(sig, users)[:, category_column(sig)] * sig.trending[None, :]


@generator("country")
def country_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Popularity among the users of the user's country (0 without a country)."""
    if sig.country_popularity is None:
        return None
    c = sig.user_country[users]
    out = sig.country_popularity[np.maximum(c, 0)].copy()
    out[c < 0] = 0.0
    return out


@generator("new")
def new_scores(sig: Signals, users: np.ndarray) -> np.ndarray | None:
    """Freshness (exp(-age / new_days), 0 past ``new_days``) x (0.5 + the user's
    affinity to the item's category)."""
    fresh = np.exp(-sig.age_days / max(sig.new_days, 1e-9)).astype("float32")
    fresh[sig.age_days > sig.new_days] = 0.0
    aff = category_affinity(sig, users)[:, category_column(sig)]
    return fresh[None, :] * (0.5 + aff)


if tuple(GENERATORS) != SOURCES:
    raise RuntimeError(f"generators {tuple(GENERATORS)} do not match SOURCES {SOURCES}")


def signal_scores(sig: Signals, source: str, users: np.ndarray) -> np.ndarray | None:
    """Dense (len(users), n_items) scores of one signal, or None when it is missing."""
    if source not in GENERATORS:
        raise ValueError(f"unknown source {source!r}")
    return GENERATORS[source](sig, users)


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


# --- Merging the generators' lists -------------------------------------------------------


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
