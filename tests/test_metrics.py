"""Offline metrics against a hand-computed fixture and a naive per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import metrics
from models.metrics import METRIC_KEYS, MetricsError, evaluate_all

L2_3 = 1 / math.log2(3)  # discount at rank 2: 0.6309297535714575
IDCG3 = 1 + L2_3 + 0.5  # ideal DCG over 3 ranks: 1/log2(2) + 1/log2(3) + 1/log2(4)

# Fixture, k = 3.
#
# u1: relevant {a, b, c}; scores a .9, x .8, b .7, r .6 -> top 3 = a(1) x(2) b(3)
#     hits a@1, b@3: hits 2, n_rel 3
#     precision 2/3, recall 2/3
#     dcg 1/log2(2) + 1/log2(4) = 1.5; idcg over min(3,3)=3 ranks = IDCG3; ndcg 1.5/IDCG3
#     AP sum: 1/1 + 2/3 = 5/3; map = (5/3)/3 = 5/9; map@k = (5/3)/min(3,3) = 5/9
# u2: relevant {d}; scores y .5, d .5 (tie: y first in frame order), z .1
#     -> top 3 = y(1) d(2) z(3); hit d@2: hits 1, n_rel 1
#     precision 1/3, recall 1; dcg 1/log2(3); idcg over min(1,3)=1 rank = 1; ndcg 1/log2(3)
#     AP sum: 1/2; map = 1/2; map@k = 1/2
# u3: relevant {e, f, g, h, i} (5 > k); scores e .3, q .2 -> only 2 predictions: e(1) q(2)
#     hit e@1: hits 1, n_rel 5
#     precision 1/3, recall 1/5; dcg 1; idcg over min(5,3)=3 ranks = IDCG3; ndcg 1/IDCG3
#     AP sum: 1; map = 1/5; map@k = 1/min(5,3) = 1/3
# u4: in truth only -> not a common user, ignored by the accuracy metrics.
# u5: in predictions only (w 1.0) -> ignored by the accuracy metrics, counted by coverage.
#
# Means over the 3 common users:
#   precision@3 = (2/3 + 1/3 + 1/3) / 3 = 4/9
#   recall@3    = (2/3 + 1 + 1/5) / 3   = 28/45
#   ndcg@3      = (1.5/IDCG3 + L2_3 + 1/IDCG3) / 3
#   map         = (5/9 + 1/2 + 1/5) / 3 = (50 + 45 + 18)/90 / 3 = 113/270
#   map@3       = (5/9 + 1/2 + 1/3) / 3 = (10 + 9 + 6)/18 / 3 = 25/54
# Coverage: top-3 items of all prediction users = {a,x,b} u {y,d,z} u {e,q} u {w}
#   = 9 distinct (r is rank 4 of u1, cut by k); with a catalog of 18 items: 9/18 = 1/2.
EXPECTED_K3 = {
    "precision@k": 4 / 9,
    "recall@k": 28 / 45,
    "ndcg@k": (1.5 / IDCG3 + L2_3 + 1 / IDCG3) / 3,
    "map": 113 / 270,
    "map@k": 25 / 54,
    "coverage": 0.5,
}


@pytest.fixture
def rating_true() -> pd.DataFrame:
    rows = [
        ("u1", "a"),
        ("u1", "b"),
        ("u1", "c"),
        ("u2", "d"),
        ("u3", "e"),
        ("u3", "f"),
        ("u3", "g"),
        ("u3", "h"),
        ("u3", "i"),
        ("u4", "a"),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


@pytest.fixture
def rating_pred() -> pd.DataFrame:
    # Interleaved users and unsorted scores: ranking must not depend on row layout,
    # except for the u2 tie (y before d in frame order).
    rows = [
        ("u2", "y", 0.5),
        ("u1", "b", 0.7),
        ("u3", "q", 0.2),
        ("u1", "a", 0.9),
        ("u2", "d", 0.5),
        ("u5", "w", 1.0),
        ("u1", "r", 0.6),
        ("u2", "z", 0.1),
        ("u1", "x", 0.8),
        ("u3", "e", 0.3),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score"])


def test_hand_computed_fixture(rating_true, rating_pred):
    got = evaluate_all(rating_true, rating_pred, k=3, n_catalog=18)
    assert list(got) == list(METRIC_KEYS)
    for key, want in EXPECTED_K3.items():
        assert got[key] == pytest.approx(want, abs=1e-12), key


def test_single_metric_functions_match_evaluate_all(rating_true, rating_pred):
    args = (rating_true, rating_pred, 3)
    assert metrics.precision_at_k(*args) == pytest.approx(EXPECTED_K3["precision@k"])
    assert metrics.recall_at_k(*args) == pytest.approx(EXPECTED_K3["recall@k"])
    assert metrics.ndcg_at_k(*args) == pytest.approx(EXPECTED_K3["ndcg@k"])
    assert metrics.mean_average_precision(*args) == pytest.approx(EXPECTED_K3["map"])
    assert metrics.map_at_k(*args) == pytest.approx(EXPECTED_K3["map@k"])
    assert metrics.catalog_coverage(rating_pred, 18, 3) == pytest.approx(0.5)


def test_per_user_table(rating_true, rating_pred):
    users = metrics.per_user(rating_true, rating_pred, 3)
    assert list(users.index) == ["u1", "u2", "u3"]  # u4 (truth only), u5 (pred only) out
    assert users["n_relevant"].tolist() == [3, 1, 5]
    assert users["hits"].tolist() == [2, 1, 1]
    assert users["dcg"].tolist() == pytest.approx([1.5, L2_3, 1.0])
    assert users["idcg"].tolist() == pytest.approx([IDCG3, 1.0, IDCG3])
    assert users["ap_sum"].tolist() == pytest.approx([5 / 3, 1 / 2, 1.0])


def test_users_missing_from_pred_or_truth_are_excluded(rating_true, rating_pred):
    base = evaluate_all(rating_true, rating_pred, k=3, n_catalog=18)
    extra_true = pd.concat(
        [rating_true, pd.DataFrame({"user_id": ["u9"] * 3, "item_id": ["a", "b", "c"]})]
    )
    extra_pred = pd.concat(
        [rating_pred, pd.DataFrame({"user_id": ["u8"], "item_id": ["w"], "score": [0.1]})]
    )
    got = evaluate_all(extra_true, extra_pred, k=3, n_catalog=18)
    assert got == pytest.approx(base)
    no_common = evaluate_all(
        rating_true[rating_true.user_id == "u4"], rating_pred, k=3, n_catalog=18
    )
    assert {k: no_common[k] for k in METRIC_KEYS[:5]} == dict.fromkeys(METRIC_KEYS[:5], 0.0)


def test_ties_follow_frame_order(rating_true, rating_pred):
    # Put d before y: the u2 tie flips, d becomes rank 1.
    # u2: precision 1/3 (unchanged), ndcg 1, AP 1: map (5/9 + 1 + 1/5)/3, ndcg changes.
    swapped = rating_pred.copy()
    swapped.iloc[[0, 4]] = swapped.iloc[[4, 0]].to_numpy()
    got = evaluate_all(rating_true, swapped, k=3, n_catalog=18)
    assert got["precision@k"] == pytest.approx(4 / 9)
    assert got["ndcg@k"] == pytest.approx((1.5 / IDCG3 + 1.0 + 1 / IDCG3) / 3)
    assert got["map"] == pytest.approx((5 / 9 + 1 + 1 / 5) / 3)


def test_k_larger_than_lists(rating_true, rating_pred):
    # k = 10: every prediction is kept (u1 now also r at rank 4, a miss); hits unchanged.
    #   precision = (2 + 1 + 1) / 10 / 3 = 2/15
    #   recall unchanged 28/45
    #   ndcg: u3 ideal DCG now over min(5, 10) = 5 ranks
    #   map unchanged 113/270; map@10 = map, since min(n_rel, 10) = n_rel for all
    idcg5 = sum(1 / math.log2(r + 1) for r in range(1, 6))
    got = evaluate_all(rating_true, rating_pred, k=10, n_catalog=18)
    assert got["precision@k"] == pytest.approx(2 / 15)
    assert got["recall@k"] == pytest.approx(28 / 45)
    assert got["ndcg@k"] == pytest.approx((1.5 / IDCG3 + L2_3 + 1 / idcg5) / 3)
    assert got["map"] == pytest.approx(113 / 270)
    assert got["map@k"] == pytest.approx(113 / 270)
    assert got["coverage"] == pytest.approx(10 / 18)  # r now recommended too


def test_duplicate_pairs_count_once(rating_true, rating_pred):
    dup_true = pd.concat([rating_true, rating_true.iloc[[0]]])  # u1 saw a twice
    dup_pred = pd.concat([rating_pred, rating_pred.iloc[[3]].assign(score=0.05)])
    got = evaluate_all(dup_true, dup_pred, k=3, n_catalog=18)
    assert got == pytest.approx(EXPECTED_K3)


def test_default_catalog_is_items_seen(rating_true, rating_pred):
    # Items in truth or predictions: a b c d e f g h i (truth) + x r y z q w = 15.
    got = evaluate_all(rating_true, rating_pred, k=3)
    assert got["coverage"] == pytest.approx(9 / 15)


def test_bad_inputs_fail_loudly(rating_true, rating_pred):
    with pytest.raises(MetricsError, match="k=0"):
        evaluate_all(rating_true, rating_pred, k=0)
    with pytest.raises(MetricsError, match="score"):
        evaluate_all(rating_true, rating_pred.drop(columns="score"))
    with pytest.raises(MetricsError, match="n_catalog"):
        metrics.catalog_coverage(rating_pred, 0)
    with pytest.raises(MetricsError, match="smaller"):
        metrics.catalog_coverage(rating_pred, 3, 3)


def _naive(rating_true: pd.DataFrame, rating_pred: pd.DataFrame, k: int) -> dict[str, float]:
    """Per-user loop over Python lists, written from recommenders' definitions."""
    truth: dict = {}
    for u, i in zip(rating_true.user_id, rating_true.item_id, strict=True):
        truth.setdefault(u, set()).add(i)
    preds: dict = {}
    for u, i, s in zip(rating_pred.user_id, rating_pred.item_id, rating_pred.score, strict=True):
        preds.setdefault(u, []).append((i, s))
    users = [u for u in truth if u in preds]
    sums = dict.fromkeys(("precision@k", "recall@k", "ndcg@k", "map", "map@k"), 0.0)
    for u in users:
        ranked = [i for i, _ in sorted(preds[u], key=lambda t: -t[1])][:k]  # stable sort
        rel = truth[u]
        hit_ranks = [r for r, i in enumerate(ranked, start=1) if i in rel]
        ap = sum(n / r for n, r in enumerate(hit_ranks, start=1))
        sums["precision@k"] += len(hit_ranks) / k
        sums["recall@k"] += len(hit_ranks) / len(rel)
        dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
        sums["ndcg@k"] += dcg / sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        sums["map"] += ap / len(rel)
        sums["map@k"] += ap / min(len(rel), k)
    return {key: v / len(users) for key, v in sums.items()}


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_naive_reference_on_random_data(k):
    rng = np.random.default_rng(7)
    n_users, n_items = 40, 60
    true = pd.DataFrame(
        {"user_id": rng.integers(0, n_users, 400), "item_id": rng.integers(0, n_items, 400)}
    ).drop_duplicates()
    pred = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(5, n_users + 5), 15),
            "item_id": rng.integers(0, n_items, n_users * 15),
            # rounded scores: plenty of ties
            "score": rng.integers(0, 5, n_users * 15).astype(float),
        }
    )
    pred = pred.drop_duplicates(["user_id", "item_id"])
    got = evaluate_all(true, pred, k=k, n_catalog=n_items)
    want = _naive(true, pred, k)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# Beyond-accuracy metrics: intra-list diversity and novelty.
#
# Diversity fixture, integer item ids. Categories: 1 {a, b}, 2 {b, c}, 3 {d}, 4 {a, b},
# 5 missing from the mapping.
#   u1: 1 .9, 2 .8, 3 .7, 4 .6; u2: 1 .5, 5 .4; u3: 2 only (one item: always skipped).
#   Jaccard distances: d(1,2) = 1 - |{b}| / |{a,b,c}| = 2/3; d(1,3) = d(2,3) = 1;
#   d(1,4) = 0; d(2,4) = 2/3; d(3,4) = 1; d(1,5) = 1 (5 has no categories).
# k = 3: u1 top 1 2 3 -> (2/3 + 1 + 1) / 3 = 8/9; u2 -> 1; diversity (8/9 + 1) / 2 = 17/18.
# k = 4: u1 adds 4 -> (2/3 + 1 + 1 + 0 + 2/3 + 1) / 6 = 13/18; diversity (13/18 + 1) / 2 = 31/36.
# k = 2: u1 top 1 2 -> 2/3; u2 -> 1; diversity (2/3 + 1) / 2 = 5/6.
# k = 1: nobody has 2 items -> 0.0.
CATEGORIES = {1: ["a", "b"], 2: ("b", "c"), 3: {"d"}, 4: ["b", "a", "a"]}


@pytest.fixture
def div_pred() -> pd.DataFrame:
    rows = [
        ("u2", 5, 0.4),
        ("u1", 3, 0.7),
        ("u1", 1, 0.9),
        ("u3", 2, 1.0),
        ("u1", 4, 0.6),
        ("u2", 1, 0.5),
        ("u1", 2, 0.8),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score"])


@pytest.mark.parametrize(("k", "want"), [(3, 17 / 18), (4, 31 / 36), (2, 5 / 6), (1, 0.0)])
def test_intra_list_diversity_hand_computed(div_pred, k, want):
    got = metrics.intra_list_diversity(div_pred, CATEGORIES, k)
    assert got == pytest.approx(want, abs=1e-12)


def test_diversity_missing_and_empty_categories_are_unique():
    # Items 7 and 8 both lack categories (7 absent, 8 empty): distance 1 between them too,
    # as it is to 9 {x}. 10 and 11 share {x} exactly: distance 0.
    cats = {8: [], 9: ["x"], 10: ["x"], 11: ["x"]}
    pred = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b"],
            "item_id": [7, 8, 9, 10, 11],
            "score": [3.0, 2.0, 1.0, 2.0, 1.0],
        }
    )
    # user a: d(7,8) = d(7,9) = d(8,9) = 1 -> 1; user b: 0 -> mean 1/2.
    assert metrics.intra_list_diversity(pred, cats, 3) == pytest.approx(0.5)
    assert metrics.intra_list_diversity(pred, {}, 3) == pytest.approx(1.0)


def test_diversity_of_identical_lists_is_zero():
    pred = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "score": [3.0, 2.0, 1.0]})
    same = {1: ["x", "y"], 2: ["y", "x"], 3: ["x", "y"]}
    assert metrics.intra_list_diversity(pred, same, 3) == 0.0


# Novelty fixture: train has item 1 x4, item 2 x2, item 3 x1, item 4 x1 -> N = 8, so item
# novelty -log2(n_i / 8) = 1, 2, 3, 3. Item 9 is not in train: n_i = 1 -> 3.
#   u1: 1 .9, 2 .8, 3 .1; u2: 3 .5, 9 .4.
# k = 2: recommended 1 2 | 3 9 -> (1 + 2 + 3 + 3) / 4 = 9/4.
# k = 3: u1 adds 3 -> (1 + 2 + 3 + 3 + 3) / 5 = 12/5 (a mean over recommendations, not
#        over users: the per-user mean would be (2 + 3) / 2 = 5/2).
# k = 1: 1 | 3 -> 2.
@pytest.fixture
def nov_train() -> pd.DataFrame:
    users = ["a", "b", "c", "d", "a", "b", "c", "d"]
    items = [1, 1, 1, 1, 2, 2, 3, 4]
    return pd.DataFrame({"user_id": users, "item_id": items})


@pytest.fixture
def nov_pred() -> pd.DataFrame:
    rows = [("u1", 1, 0.9), ("u2", 9, 0.4), ("u1", 2, 0.8), ("u1", 3, 0.1), ("u2", 3, 0.5)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score"])


@pytest.mark.parametrize(("k", "want"), [(2, 9 / 4), (3, 12 / 5), (1, 2.0), (10, 12 / 5)])
def test_novelty_hand_computed(nov_train, nov_pred, k, want):
    assert metrics.novelty(nov_train, nov_pred, k) == pytest.approx(want, abs=1e-12)


def test_novelty_matches_recommenders_formula(nov_train, nov_pred):
    # recommenders' historical_item_novelty / novelty, on items all present in train.
    pred = nov_pred[nov_pred.item_id != 9]
    item_count = nov_train.groupby("item_id").size().rename("count").reset_index()
    item_count["item_novelty"] = -np.log2(item_count["count"] / nov_train.shape[0])
    reco_count = pred.groupby("item_id").size().rename("count").reset_index()
    merged = reco_count.merge(item_count[["item_id", "item_novelty"]], on="item_id")
    want = (merged["count"] * merged["item_novelty"]).sum() / pred.shape[0]
    assert metrics.novelty(nov_train, pred, 10) == pytest.approx(want)


def test_evaluate_all_adds_beyond_accuracy_keys_only_when_asked(div_pred, nov_train):
    truth = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": [1, 5]})
    base = evaluate_all(truth, div_pred, k=3)
    assert list(base) == list(METRIC_KEYS)
    with_div = evaluate_all(truth, div_pred, k=3, item_categories=CATEGORIES)
    assert list(with_div) == [*METRIC_KEYS, metrics.DIVERSITY_KEY]
    assert with_div[metrics.DIVERSITY_KEY] == pytest.approx(17 / 18)
    with_nov = evaluate_all(truth, div_pred, k=3, train=nov_train)
    assert list(with_nov) == [*METRIC_KEYS, metrics.NOVELTY_KEY]
    # Top 3: u1 1 2 3, u2 1 5, u3 2; novelty 1, 2, 3 | 1, 3 (5 not in train) | 2 -> 12 / 6.
    assert with_nov[metrics.NOVELTY_KEY] == pytest.approx(2.0)
    both = evaluate_all(truth, div_pred, k=3, item_categories=CATEGORIES, train=nov_train)
    assert list(both) == [*METRIC_KEYS, "diversity@k", "novelty@k"]
    assert {key: both[key] for key in METRIC_KEYS} == base  # existing keys unchanged


def test_beyond_accuracy_bad_inputs_fail_loudly(div_pred, nov_train, nov_pred):
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(MetricsError, match=f"k={bad_k!r}"):
            metrics.intra_list_diversity(div_pred, CATEGORIES, bad_k)
        with pytest.raises(MetricsError, match=f"k={bad_k!r}"):
            metrics.novelty(nov_train, nov_pred, bad_k)
    with pytest.raises(MetricsError, match="k=0"):
        evaluate_all(nov_pred, nov_pred, k=0, item_categories=CATEGORIES, train=nov_train)
    with pytest.raises(MetricsError, match=r"item_categories\[1\]"):
        metrics.intra_list_diversity(div_pred, {1: "ab"}, 3)
    with pytest.raises(MetricsError, match="mapping"):
        metrics.intra_list_diversity(div_pred, [("a",)], 3)
    with pytest.raises(MetricsError, match="train: no rows"):
        metrics.novelty(nov_train.iloc[:0], nov_pred, 3)
    with pytest.raises(MetricsError, match="train: missing"):
        metrics.novelty(nov_train.drop(columns="item_id"), nov_pred, 3)


def _naive_diversity(pred: pd.DataFrame, cats: dict, k: int) -> float:
    """Per-user loop over item pairs, from the definition."""
    lists: dict = {}
    for u, i, s in zip(pred.user_id, pred.item_id, pred.score, strict=True):
        lists.setdefault(u, []).append((i, s))
    per_user = []
    for items in lists.values():
        top = [i for i, _ in sorted(items, key=lambda t: -t[1])][:k]
        if len(top) < 2:
            continue
        dists = []
        for x in range(len(top)):
            for y in range(x + 1, len(top)):
                a, b = set(cats.get(top[x], ())), set(cats.get(top[y], ()))
                dists.append(1.0 if not a or not b else 1 - len(a & b) / len(a | b))
        per_user.append(sum(dists) / len(dists))
    return sum(per_user) / len(per_user) if per_user else 0.0


def _naive_novelty(train: pd.DataFrame, pred: pd.DataFrame, k: int) -> float:
    counts: dict = {}
    for i in train.item_id:
        counts[i] = counts.get(i, 0) + 1
    lists: dict = {}
    for u, i, s in zip(pred.user_id, pred.item_id, pred.score, strict=True):
        lists.setdefault(u, []).append((i, s))
    nov = [
        -math.log2(counts.get(i, 1) / len(train))
        for items in lists.values()
        for i, _ in sorted(items, key=lambda t: -t[1])[:k]
    ]
    return sum(nov) / len(nov)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_beyond_accuracy_match_naive_reference_on_random_data(k):
    rng = np.random.default_rng(11)
    n_items = 50
    names = list("abcdefgh")
    cats = {
        i: list(rng.choice(names, size=rng.integers(0, 4)))
        for i in range(n_items)
        if rng.random() < 0.8  # about a fifth of the items have no entry at all
    }
    pred = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, 300),
            "item_id": rng.integers(0, n_items, 300),
            "score": rng.integers(0, 4, 300).astype(float),  # ties
        }
    ).drop_duplicates(["user_id", "item_id"])
    train = pd.DataFrame(
        {"user_id": rng.integers(0, 30, 200), "item_id": rng.integers(0, n_items - 10, 200)}
    )
    assert metrics.intra_list_diversity(pred, cats, k) == pytest.approx(
        _naive_diversity(pred, cats, k), abs=1e-12
    )
    assert metrics.novelty(train, pred, k) == pytest.approx(
        _naive_novelty(train, pred, k), abs=1e-12
    )
