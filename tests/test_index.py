"""FAISS index factory against exact search, and top-K retrieval with exclusion."""

from __future__ import annotations

import numpy as np

from models import index as ann
from models.topk import because_items, top_k_excluding


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype("float32")


def test_small_catalog_gets_an_exact_index_equal_to_brute_force():
    x = _clustered(500, 16, 0)
    index = ann.build(x, ann.IndexConfig(exact_max=1000))
    assert ann.kind(index) == "flat"
    q = x[:20]
    scores, rows = ann.search(index, q, 10)
    brute = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(np.sort(rows, axis=1), np.sort(brute, axis=1))
    assert ann.recall_vs_exact(index, x, q, k=10) == 1.0


def test_hnsw_above_the_threshold_keeps_recall_above_the_floor():
    x = _clustered(20_000, 32, 1)
    index = ann.build(x, ann.IndexConfig(exact_max=5_000))
    assert ann.kind(index) == "hnsw"
    queries = x[ann.sample_queries(len(x), n=300, seed=42)]
    recall = ann.recall_vs_exact(index, x, queries, k=10)
    assert recall >= 0.95, recall
    cos = ann.build(x, ann.IndexConfig(exact_max=5_000, normalize=True))
    assert ann.recall_vs_exact(cos, x, queries, k=10, normalize=True) >= 0.95


def test_hnsw_codes_float32_by_default_sq8_on_request_and_nothing_else():
    """The graph stores float32 vectors by default, 8-bit codes (a quarter of the memory)
    on request; both above the recall floor on the same data."""
    import faiss
    import pytest

    x = _clustered(12_000, 48, 4)
    queries = x[ann.sample_queries(len(x), n=200, seed=7)]
    sq8 = ann.build(x, ann.IndexConfig(exact_max=0, hnsw_codes="sq8"))
    flat = ann.build(x, ann.IndexConfig(exact_max=0))
    assert isinstance(sq8, faiss.IndexHNSWSQ) and isinstance(flat, faiss.IndexHNSWFlat)
    assert ann.kind(sq8) == ann.kind(flat) == "hnsw"
    assert sq8.hnsw.efSearch == flat.hnsw.efSearch == ann.IndexConfig().ef_search
    for index in (sq8, flat):
        assert ann.recall_vs_exact(index, x, queries, k=10) >= 0.95
    sizes = [len(faiss.serialize_index(i)) for i in (sq8, flat)]
    # Codes: 48 bytes a vector instead of 192 (the graph's links are the same in both).
    assert sizes[1] - sizes[0] >= 0.95 * len(x) * (192 - 48), sizes
    with pytest.raises(ValueError, match="hnsw_codes"):
        ann.build(x, ann.IndexConfig(exact_max=0, hnsw_codes="pq"))


def test_hnsw_builds_are_identical_and_leave_the_thread_count_alone():
    """A re-run of a date must build the same graph: FAISS's multi-threaded HNSW add is
    not reproducible (its maintainers' advice: add on one thread), so build() adds on one
    thread and restores the caller's thread count."""
    import faiss

    x = _clustered(8_000, 32, 2)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(4)
    try:
        graphs = [faiss.serialize_index(ann.build(x, ann.IndexConfig(exact_max=0))).tobytes()
                  for _ in range(2)]
        assert faiss.omp_get_max_threads() == 4
    finally:
        faiss.omp_set_num_threads(before)
    assert graphs[0] == graphs[1]


def test_top_k_excludes_consumed_items_and_fills_the_list():
    rng = np.random.default_rng(3)
    items = rng.normal(size=(60, 8)).astype("float32")
    users = rng.normal(size=(5, 8)).astype("float32")
    index = ann.build(items)
    # User 0 consumed their 30 best items: the list must still hold 10 others.
    best = np.argsort(-(users[0] @ items.T), kind="stable")
    exclude = [best[:30], np.array([], dtype="int64"), best[:5], np.arange(55),
               np.arange(60)]
    rows, scores = top_k_excluding(index, users, exclude, k=10)
    assert list(rows[0]) == list(best[30:40])
    for u in range(4):
        got = rows[u][rows[u] >= 0]
        assert not set(got) & set(exclude[u])
        assert np.all(np.diff(scores[u][rows[u] >= 0]) <= 1e-6)
    assert (rows[3] >= 0).sum() == 5  # only five items left
    assert (rows[4] == -1).all()


def test_because_items_names_the_most_similar_history_item():
    rng = np.random.default_rng(5)
    items = rng.normal(size=(40, 6)).astype("float32")
    recs = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    history = [np.array([10, 11, 12]), np.array([], dtype="int64")]
    got = because_items(items, recs, history)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    for j, r in enumerate(recs[0][:3]):
        sims = unit[history[0]] @ unit[r]
        assert got[0, j] == history[0][np.argmax(sims)]
    assert got[0, 3] == -1 and (got[1] == -1).all()
