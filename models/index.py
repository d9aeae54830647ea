"""ANN index factory over any model's item vectors (FAISS).

Below ``exact_max`` vectors the index is exact (``IndexFlatIP``); above it, HNSW with
inner product, over float32 vectors (``hnsw_codes="flat"``, the default) or 8-bit
scalar-quantized codes (``"sq8"``, ``IndexHNSWSQ``). Codes cut the vectors' memory by 4
(the graph's links stay) and an HNSW search's time by about 1.5 (a search is bound by
reading the vectors of the nodes it visits, at random), but their scores are approximate
and near-ties swap: they are for callers that rescore the hits exactly, as the funnel's
generators do (models/generators.py:search); lists served with the index's own scores
(similar items) keep float32. ``recall_vs_exact`` measures what the approximation loses,
so every built index records its recall against exact search on a seeded sample of
queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IndexConfig:
    exact_max: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256
    hnsw_codes: str = "flat"  # how the HNSW graph stores vectors: "flat" (float32) or "sq8"
    normalize: bool = False  # True: cosine similarity instead of inner product


def _prep(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype="float32")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1.0, norms)
    return np.ascontiguousarray(x, dtype="float32")


def build(vectors: np.ndarray, config: IndexConfig = IndexConfig()):
    """Build an index over ``vectors`` (rows = items). Returns a FAISS index.

    An HNSW graph is built on one thread: FAISS links the items of a level in parallel,
    and which neighbours an item keeps then depends on thread timing, so two builds over
    the same vectors could differ (and with them the day's lists). One thread makes a
    re-run of a date build the same graph (tests/test_index.py), at about 1.15x the build
    time on this 2-core machine (100K x 64-d: 21.8 s against 18.9 s)."""
    import faiss

    x = _prep(vectors, config.normalize)
    d = x.shape[1]
    if len(x) <= config.exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        if config.hnsw_codes == "sq8":  # per-dimension min/max: deterministic training
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, config.hnsw_m,
                                      faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        elif config.hnsw_codes == "flat":
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"hnsw_codes must be 'sq8' or 'flat', not {config.hnsw_codes!r}")
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
        return index
    index.add(x)
    return index


def kind(index) -> str:
    import faiss

    return "hnsw" if isinstance(index, faiss.IndexHNSW) else "flat"


def search(index, queries: np.ndarray, k: int, normalize: bool = False):
    """Top-``k`` (scores, row indices) for each query row; -1 marks a missing hit."""
    q = _prep(queries, normalize)
    k = min(k, index.ntotal)
    return index.search(q, k)


def recall_vs_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int = 10,
                    normalize: bool = False) -> float:
    """Recall@k of ``index`` against exact inner-product search over ``vectors``."""
    import faiss

    x = _prep(vectors, normalize)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(_prep(queries, normalize), min(k, len(x)))
    _, got = search(index, queries, k, normalize)
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def sample_queries(n_rows: int, n: int = 500, seed: int = 42) -> np.ndarray:
    """Seeded row sample used as recall queries."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(n, n_rows), replace=False))
