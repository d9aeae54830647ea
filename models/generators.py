"""Candidate generators: stage 1 of the funnel (pure compute).

Each generator proposes, per user, its best items not in the user's history, with its own
score (a score of exactly 0 is "no evidence": never a pick):

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

No generator scores the whole catalog for a user, so the cost per user does not grow with
the catalog: the vector generators (ALS, two-tower, text) search a FAISS index over the
item vectors (exact up to ``Signals.exact_max`` items, HNSW above: models/index.py) for N
plus the user's consumed items plus a margin, and rescore the hits exactly;
co-visitation multiplies the user's sparse history by the sparse neighbour matrix;
trending, country and "new" read lists sorted once per catalog (:class:`ItemSide`), each
cut to the length that can hold the user's best N. EASE and item-kNN are dense item x
item matrices, built only for catalogs under their size limit
(models/signals.py:item_item). With exact indices the lists are those of scoring every
item (ties: lower catalog row first).

Every value for a user depends on that user's own history alone, never on the other
users of its batch (the exact rescoring uses numpy's einsum, whose value for a row does
not depend on how many rows it is given, unlike a BLAS product): a Spark partition and
the in-process funnel give the same candidates.

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
MARGIN = 16  # extra index hits per query: exact rescoring may reorder near-ties at the edge


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


# --- What retrieval reads of the catalog, built once per catalog --------------------------


@dataclass
class ItemSide:
    """The generators' catalog structures, built once per catalog (per Spark executor):
    a FAISS index per vector signal ('als', 'two_tower', 'text'; None where missing),
    per category column (the last is "no category") the item rows with a trending score,
    best first, per country the item rows popular there, best first, the freshness of
    every item (0: not new), per category column the new items, freshest first, and the
    category column of every item."""

    indices: dict[str, object | None]
    kinds: dict[str, str]  # 'flat' (exact) or 'hnsw' per built index
    by_category: list[np.ndarray]
    by_country: list[np.ndarray]
    fresh: np.ndarray
    new_by_category: list[np.ndarray]
    category_col: np.ndarray


def _sorted_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` whose value is positive, by value descending then row ascending."""
    rows = rows[values[rows] > 0]
    return rows[np.lexsort((rows, -values[rows]))]


def freshness(sig: Signals) -> np.ndarray:
    """exp(-age / new_days) per item, 0 past ``new_days``."""
    fresh = np.exp(-sig.age_days / max(sig.new_days, 1e-9)).astype("float32")
    fresh[sig.age_days > sig.new_days] = 0.0
    return fresh


def item_side(sig: Signals, build_indices: bool = True) -> ItemSide:
    """The catalog structures of ``sig`` (indices exact up to ``sig.exact_max`` items;
    without ``build_indices`` the caller sets ``indices``, e.g. read from files)."""
    from models import index as ann

    # Above exact_max, HNSW over 8-bit codes: every hit is rescored exactly with the
    # float32 vectors (search), so the codes decide only which items are visited; a
    # search reads a quarter of the bytes and takes about 1.5x less time than over
    # float32 (models/index.py). The float32 vectors stay in memory for the rescoring.
    cfg = ann.IndexConfig(exact_max=sig.exact_max, hnsw_codes="sq8")
    indices, kinds = {}, {}
    for name, vectors in (("als", sig.als_items), ("two_tower", sig.tt_items),
                          ("text", sig.text)):
        indices[name] = None if vectors is None or not build_indices else \
            ann.build(vectors, cfg)
        if indices[name] is not None:
            kinds[name] = ann.kind(indices[name])
    col = category_column(sig)
    by_category = [_sorted_rows(sig.trending, np.flatnonzero(col == c))
                   for c in range(len(sig.category_names) + 1)]
    every = np.arange(sig.n_items)
    by_country = [] if sig.country_popularity is None else \
        [_sorted_rows(p, every) for p in sig.country_popularity]
    fresh = freshness(sig)
    new_by_category = [_sorted_rows(fresh, np.flatnonzero(col == c))
                       for c in range(len(sig.category_names) + 1)]
    return ItemSide(indices, kinds, by_category, by_country, fresh, new_by_category, col)


def retrieval(sig: Signals) -> ItemSide:
    """``sig``'s :class:`ItemSide`, built on first use and kept on ``sig``."""
    if sig.retrieval is None:
        sig.retrieval = item_side(sig)
    return sig.retrieval


# --- Exact, row-independent arithmetic --------------------------------------------------


def best(rows: np.ndarray, scores: np.ndarray, exclude: Sequence[int] | np.ndarray, n: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``n`` of (rows, scores): a score of exactly 0 (no evidence) or not finite
    is never a pick, nor an excluded row; by score descending, then row ascending."""
    keep = (scores != 0) & np.isfinite(scores) & (rows >= 0)
    if len(exclude):
        keep &= ~np.isin(rows, exclude)
    rows, scores = rows[keep], scores[keep]
    if 0 < n < len(rows) // 2:  # only scores at or above the n-th best can be picked
        nth = -np.partition(-scores, n - 1)[n - 1]
        top = scores >= nth
        rows, scores = rows[top], scores[top]
    order = np.lexsort((rows, -scores))[:n]
    return rows[order], scores[order].astype("float32")


def dot(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vectors @ query`` in float32, each row's value independent of the other rows
    (numpy's einsum loop; a BLAS matrix-vector product rounds a row differently depending
    on how many rows it is given)."""
    return np.einsum("ij,j->i", vectors, query).astype("float32", copy=False)


def per_user_dot(queries: np.ndarray, item_vectors: np.ndarray, cu: np.ndarray,
                 ci: np.ndarray) -> np.ndarray:
    """``queries[cu[k]] . item_vectors[ci[k]]`` for candidate pairs sorted by ``cu``."""
    out = np.zeros(len(cu), "float32")
    starts = np.searchsorted(cu, np.arange(len(queries) + 1))
    for r in range(len(queries)):
        a, b = starts[r], starts[r + 1]
        if b > a:
            out[a:b] = dot(item_vectors[ci[a:b]], queries[r])
    return out


def search(index, item_vectors: np.ndarray, queries: np.ndarray,
           exclude: list[np.ndarray], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: the best ``n`` items by inner product, not excluded, from n + the
    query's excluded items + :data:`MARGIN` hits of the index rescored exactly
    (:func:`dot`) and ordered by (score desc, row asc)."""
    from models import index as ann

    out: list = [(np.empty(0, "int64"), np.empty(0, "float32"))] * len(queries)
    want = np.array([min(index.ntotal, n + len(e) + MARGIN) for e in exclude], "int64")
    # Queries grouped by how many hits they need (rounded up to 64), so that one user
    # with a long history does not make its whole batch fetch thousands of hits (an
    # HNSW search costs more the more hits it returns). Filtering the excluded items
    # inside an HNSW search (an IDSelector) measured slower than fetching them.
    bucket = -(-want // 64) * 64
    for b in np.unique(bucket[want > 0]):
        q = np.flatnonzero((bucket == b) & (want > 0))
        _, hits = ann.search(index, queries[q], int(min(index.ntotal, b)))
        for j, r in enumerate(q):
            rows = hits[j][hits[j] >= 0].astype("int64")
            out[r] = best(rows, dot(item_vectors[rows], queries[r]), exclude[r], n)
    return out


def history_matrix(sig: Signals, users: np.ndarray, recent: int | None) -> sp.csr_matrix:
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


def _sparse_rows(m: sp.csr_matrix) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sorted columns, values) of each row of a CSR matrix."""
    m = m.tocsr()
    m.sort_indices()
    return [(m.indices[a:b].astype("int64"), m.data[a:b].astype("float32"))
            for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True)]


def _lookup(rows: list[tuple[np.ndarray, np.ndarray]], cu: np.ndarray, ci: np.ndarray
            ) -> np.ndarray:
    """Values of per-user sparse rows (sorted columns) at pairs (cu, ci); 0 if absent."""
    out = np.zeros(len(cu), "float32")
    starts = np.searchsorted(cu, np.arange(len(rows) + 1))
    for r, (cols, vals) in enumerate(rows):
        a, b = starts[r], starts[r + 1]
        if b <= a or not len(cols):
            continue
        pos = np.minimum(np.searchsorted(cols, ci[a:b]), len(cols) - 1)
        hit = cols[pos] == ci[a:b]
        out[a:b][hit] = vals[pos[hit]]
    return out


class Batch:
    """One batch of users and what each generator derives from their histories,
    computed once and read both to retrieve and to score candidates."""

    def __init__(self, sig: Signals, users: np.ndarray) -> None:
        self.sig, self.users = sig, users
        self.side = retrieval(sig)
        self.exclude = [sig.history[u] for u in users]
        self._cache: dict[str, object] = {}

    def _once(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def affinity(self) -> np.ndarray:
        return self._once("affinity", lambda: category_affinity(self.sig, self.users))

    def covisit_rows(self, recent: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._once(f"covisit{recent}", lambda: _sparse_rows(
            history_matrix(self.sig, self.users, recent) @ self.sig.covisit))

    def item_item_rows(self, name: str) -> np.ndarray:
        """(len(users), n_items) history x EASE or item-kNN (small catalogs only)."""
        matrix = self.sig.ease if name == "ease" else self.sig.itemknn
        return self._once(name, lambda: np.asarray(
            history_matrix(self.sig, self.users, None) @ matrix))

    @property
    def text_profiles(self) -> np.ndarray:
        """Per user: the unit mean text vector of its newest :data:`RECENT` items."""
        def make():
            out = np.zeros((len(self.users), self.sig.text.shape[1]), "float32")
            for r, h in enumerate(self.exclude):
                if len(h):
                    out[r] = self.sig.text[h[:RECENT]].mean(0, dtype="float32")
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return self._once("text", make)


# --- The generators, one per source ------------------------------------------------------

Picks = list[tuple[np.ndarray, np.ndarray]]  # per user of the batch: (item rows, scores)


@dataclass(frozen=True)
class Generator:
    """One source: whether its signal exists, its best ``n`` items per user of a batch,
    and its raw score of given (user position, item row) pairs sorted by user."""

    available: Callable[[Signals], bool]
    retrieve: Callable[[Batch, int], Picks]
    score: Callable[[Batch, np.ndarray, np.ndarray], np.ndarray]


GENERATORS: dict[str, Generator] = {}


def generator(source: str, available: Callable[[Signals], bool], retrieve, score) -> None:
    """Register the generator of ``source`` (one of :data:`SOURCES`)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: add it to SOURCES first")
    if source in GENERATORS:
        raise ValueError(f"source {source!r} already has a generator")
    GENERATORS[source] = Generator(available, retrieve, score)


def _vector_generator(source: str, users_of, items_of) -> None:
    """A user vector x item vectors, retrieved from the source's FAISS index."""
    def retrieve(b: Batch, n: int) -> Picks:
        return search(b.side.indices[source], items_of(b.sig), users_of(b.sig)[b.users],
                      b.exclude, n)

    def score(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
        return per_user_dot(users_of(b.sig)[b.users], items_of(b.sig), cu, ci)

    generator(source, lambda sig: items_of(sig) is not None, retrieve, score)


def _item_item_generator(source: str) -> None:
    """EASE or item-kNN weights summed over the user's whole history (dense)."""
    def retrieve(b: Batch, n: int) -> Picks:
        dense, every, out = b.item_item_rows(source), np.arange(b.sig.n_items), []
        for r, consumed in enumerate(b.exclude):
            s = dense[r].astype("float32", copy=True)
            s[consumed] = 0.0  # consumed: never a pick
            out.append(best(every, s, (), n))
        return out

    def score(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
        return b.item_item_rows(source)[cu, ci].astype("float32")

    generator(source, lambda sig: getattr(sig, source) is not None, retrieve, score)


def _covisit_generator(source: str, recent: int) -> None:
    """Co-visitation averaged over the user's newest ``recent`` items (0: all)."""
    def retrieve(b: Batch, n: int) -> Picks:
        return [best(cols, vals, consumed, n)
                for (cols, vals), consumed in zip(b.covisit_rows(recent), b.exclude,
                                                  strict=True)]

    def score(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
        return _lookup(b.covisit_rows(recent), cu, ci)

    generator(source, lambda sig: sig.covisit is not None, retrieve, score)


def _list_generator(source: str, available, lists_of, value) -> None:
    """Candidates from short lists of item rows (``lists_of(b, r, n)``: those of batch
    user r, each cut to what can hold the user's best n), scored by ``value(b, cu, ci)``."""
    def retrieve(b: Batch, n: int) -> Picks:
        out = []
        for r, consumed in enumerate(b.exclude):
            pool = lists_of(b, r, n)
            rows = np.unique(np.concatenate(pool)) if pool else np.empty(0, "int64")
            out.append(best(rows, value(b, np.full(len(rows), r), rows), consumed, n))
        return out

    generator(source, available, retrieve, value)


def _text_retrieve(b: Batch, n: int) -> Picks:
    return search(b.side.indices["text"], b.sig.text, b.text_profiles, b.exclude, n)


def _text_score(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
    return per_user_dot(b.text_profiles, b.sig.text, cu, ci)


def _trending_value(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Trending score x the user's affinity to the item's category."""
    return (b.affinity[cu, b.side.category_col[ci]] * b.sig.trending[ci]).astype("float32")


def _trending_lists(b: Batch, r: int, n: int) -> list[np.ndarray]:
    """The trending lists of the categories the user likes (sorted by trending score,
    which the user's score multiplies by one factor per category): n + the user's
    consumed items of each."""
    end = n + len(b.exclude[r])
    return [b.side.by_category[c][:end] for c in np.flatnonzero(b.affinity[r] > 0)]


def _country_value(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Popularity among the users of the user's country (0 without a country)."""
    c = b.sig.user_country[b.users[cu]]
    out = b.sig.country_popularity[np.maximum(c, 0), ci].astype("float32")
    out[c < 0] = 0.0
    return out


def _country_lists(b: Batch, r: int, n: int) -> list[np.ndarray]:
    c = b.sig.user_country[b.users[r]]
    return [b.side.by_country[c][:n + len(b.exclude[r])]] if c >= 0 else []


def _new_value(b: Batch, cu: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Freshness x (0.5 + the user's affinity to the item's category)."""
    aff = b.affinity[cu, b.side.category_col[ci]]
    return (b.side.fresh[ci] * (0.5 + aff)).astype("float32")


def _new_lists(b: Batch, r: int, n: int) -> list[np.ndarray]:
    """Per category, its new items freshest first, cut after n + the user's consumed new
    items of that category + :data:`MARGIN`: within a category the user's score is the
    freshness times one factor, so its best n not consumed are in that head (the margin
    keeps items whose float32 scores tie at the cut). The pool is bounded by the number
    of categories, not by how many items are new."""
    consumed = b.exclude[r]
    side = b.side
    seen = consumed[side.fresh[consumed] > 0]
    per_cat = np.bincount(side.category_col[seen], minlength=len(side.new_by_category))
    return [rows[:n + k + MARGIN] for rows, k in zip(side.new_by_category, per_cat,
                                                        strict=True) if len(rows)]


_vector_generator("als", lambda sig: sig.als_users, lambda sig: sig.als_items)
_vector_generator("two_tower", lambda sig: sig.tt_users, lambda sig: sig.tt_items)
_item_item_generator("ease")
_item_item_generator("itemknn")
_covisit_generator("covisit", RECENT)
_covisit_generator("covisit_history", 0)
generator("text", lambda sig: sig.text is not None, _text_retrieve, _text_score)
_list_generator("trending", lambda sig: True, _trending_lists, _trending_value)
_list_generator("country", lambda sig: sig.country_popularity is not None, _country_lists,
                _country_value)
_list_generator("new", lambda sig: True, _new_lists, _new_value)

if tuple(GENERATORS) != SOURCES:
    raise RuntimeError(f"generators {tuple(GENERATORS)} do not match SOURCES {SOURCES}")


# --- Merging the generators' lists -------------------------------------------------------


@dataclass
class Candidates:
    """Merged candidates in long form: one row per (user, item), sorted by user."""

    user: np.ndarray  # rows into the users that were asked for
    item: np.ndarray  # catalog rows
    ranks: np.ndarray  # (m, n_sources) rank in each generator's list (0-based, -1: absent)
    scores: np.ndarray  # (m, n_sources) every signal's raw score


def generate(sig: Signals, users: np.ndarray, sizes: PoolSizes = PoolSizes()) -> Candidates:
    """Candidates for ``users`` (user rows) from every generator, merged and scored."""
    n_src = len(SOURCES)
    b = Batch(sig, users)
    live = {s: GENERATORS[s].available(sig) for s in SOURCES}
    keys, src_col, src_rank = [], [], []
    for j, source in enumerate(SOURCES):
        if not live[source] or sizes.get(source) == 0:
            continue
        for r, (rows, _) in enumerate(GENERATORS[source].retrieve(b, sizes.get(source))):
            keys.append(r * sig.n_items + rows)
            src_col.append(np.full(len(rows), j))
            src_rank.append(np.arange(len(rows)))
    if not keys:
        empty = np.empty(0, "int64")
        return Candidates(empty, empty, np.empty((0, n_src), "int32"),
                          np.empty((0, n_src), "float32"))
    key = np.concatenate(keys)
    uniq, inv = np.unique(key, return_inverse=True)
    ranks = np.full((len(uniq), n_src), -1, "int32")
    ranks[inv, np.concatenate(src_col)] = np.concatenate(src_rank)
    user, item = (uniq // sig.n_items).astype("int64"), (uniq % sig.n_items).astype("int64")
    scores = np.zeros((len(uniq), n_src), "float32")
    for j, source in enumerate(SOURCES):
        if live[source]:
            scores[:, j] = GENERATORS[source].score(b, user, item)
    return Candidates(user, item, ranks, scores)
