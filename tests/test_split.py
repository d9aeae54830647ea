"""Splitters against a literal per-group re-implementation of recommenders' algorithm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.split import SplitError, per_user_time_split, stratified_split, time_split


def _reference_stratified(df: pd.DataFrame, ratio: float, by: str, seed: int):
    """recommenders 1.2.1 ``_do_stratification(is_random=True)``, written as a plain loop.

    Seed the global generator, draw one uniform per row in frame order, sort by
    (group, draw), then walk each group: its first round(ratio * n) rows go to train,
    the rest to test (Python's round of a float: half to even).
    """
    data = df.copy()
    np.random.seed(seed)
    data["random"] = np.random.rand(data.shape[0])
    data = data.sort_values([by, "random"])
    train_rows, test_rows = [], []
    for _, group in data.groupby(by, sort=True):
        n = len(group)
        n_train = round(ratio * n)
        for rank, label in enumerate(group.index, start=1):
            (train_rows if rank <= n_train else test_rows).append(label)
    data = data.drop(columns="random")
    return data.loc[train_rows], data.loc[test_rows]


def _frame(n_rows: int = 300, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 25, n_rows),
            "item_id": rng.integers(0, 40, n_rows),
            "rating": rng.integers(1, 6, n_rows).astype(float),
            "timestamp": rng.integers(0, 50, n_rows),  # many ties
        },
        index=rng.permutation(np.arange(1000, 1000 + n_rows)),
    )  # non-trivial labels


@pytest.mark.parametrize("by", ["item", "user"])
@pytest.mark.parametrize("ratio,seed", [(0.75, 42), (0.5, 1), (0.8, 123)])
def test_stratified_matches_reference(by, ratio, seed):
    df = _frame()
    train, test = stratified_split(df, ratio=ratio, filter_by=by, seed=seed)
    ref_train, ref_test = _reference_stratified(df, ratio, f"{by}_id", seed)
    pd.testing.assert_frame_equal(train, ref_train)  # same rows, same order, same labels
    pd.testing.assert_frame_equal(test, ref_test)


def test_stratified_counts_round_half_to_even():
    # Item i has sizes[i] rows; the train share is round(0.75 * n), half to even.
    sizes = {"n1": 1, "n2": 2, "n3": 3, "n4": 4, "n5": 5, "n6": 6, "n10": 10}
    want_train = {
        "n1": 1,  # 0.75 -> 1
        "n2": 2,  # 1.5  -> 2 (even)
        "n3": 2,  # 2.25 -> 2
        "n4": 3,  # 3.0
        "n5": 4,  # 3.75 -> 4
        "n6": 4,  # 4.5  -> 4 (even)
        "n10": 8,
    }  # 7.5  -> 8 (even)
    items = [item for item, n in sizes.items() for _ in range(n)]
    df = pd.DataFrame({"user_id": range(len(items)), "item_id": items})
    train, test = stratified_split(df)
    assert train["item_id"].value_counts().to_dict() == want_train
    want_test = {i: sizes[i] - want_train[i] for i in sizes if sizes[i] > want_train[i]}
    assert test["item_id"].value_counts().to_dict() == want_test


def test_stratified_partitions_input_and_is_deterministic():
    df = _frame()
    before = df.copy()
    state = np.random.get_state()[1].copy()
    train, test = stratified_split(df, seed=9)
    assert np.array_equal(np.random.get_state()[1], state)  # global RNG untouched
    pd.testing.assert_frame_equal(df, before)  # input not modified
    assert train.index.intersection(test.index).empty
    pd.testing.assert_frame_equal(pd.concat([train, test]).sort_index(), df.sort_index())
    again = stratified_split(df, seed=9)
    pd.testing.assert_frame_equal(again[0], train)
    pd.testing.assert_frame_equal(again[1], test)
    other = stratified_split(df, seed=10)[0]
    assert not other.index.equals(train.index)
    # Rows come back in recommenders' order: by item, then by the (hidden) draw.
    assert train["item_id"].is_monotonic_increasing


def test_stratified_rejects_bad_arguments():
    df = _frame(20)
    for ratio in (0.0, 1.0, 1.5, "0.7", True):
        with pytest.raises(SplitError, match="ratio"):
            stratified_split(df, ratio=ratio)
    with pytest.raises(SplitError, match="filter_by"):
        stratified_split(df, filter_by="rating")
    with pytest.raises(SplitError, match="missing column"):
        stratified_split(df.drop(columns="item_id"))
    with pytest.raises(SplitError, match="missing value"):
        stratified_split(df.assign(item_id=df["item_id"].astype(float).where(df.index > 1005)))


def test_per_user_time_split():
    df = pd.DataFrame(
        {
            # user 1: 4 events -> 3 train; user 2: 2 events -> round(1.5) = 2 train, 0 test;
            # user 3: 6 events with a tie at t=5 -> round(4.5) = 4 train, frame order breaks tie
            "user_id": [1, 2, 1, 3, 3, 3, 1, 3, 2, 1, 3, 3],
            "item_id": list(range(12)),
            "timestamp": [40, 7, 10, 5, 9, 1, 30, 5, 3, 20, 2, 8],
        }
    )
    train, test = per_user_time_split(df, 0.75)
    assert train["item_id"].tolist() == [2, 9, 6, 8, 1, 5, 10, 3, 7]
    assert test["item_id"].tolist() == [0, 11, 4]
    # Each user's latest train event precedes their earliest test event.
    last_train = train.groupby("user_id")["timestamp"].max()
    first_test = test.groupby("user_id")["timestamp"].min()
    assert (last_train.loc[first_test.index] <= first_test).all()


def test_time_split_global_cut_with_ties():
    df = pd.DataFrame(
        {"user_id": range(8), "item_id": range(8), "timestamp": [5, 1, 3, 3, 8, 3, 2, 7]}
    )
    train, test = time_split(df, 0.75)  # round(6.0) = 6 train rows
    # Sorted (stable): t1(1) t2(6) t3(2) t3(3) t3(5) t5(0) | t7(7) t8(4)
    assert train.index.tolist() == [1, 6, 2, 3, 5, 0]
    assert test.index.tolist() == [7, 4]
    train, test = time_split(df, 0.3)  # round(2.4) = 2; the t=3 tie goes to test
    assert train.index.tolist() == [1, 6]
    assert test["timestamp"].min() == 3
    with pytest.raises(SplitError, match="timestamp"):
        time_split(df.drop(columns="timestamp"))


def test_ml_latest_small_split_sizes(ml_small):
    # 100,836 ratings of 9,724 movies -> 76,882 train / 23,954 test. (The rank/count <= ratio
    # variant of recommenders' splitter, which floors instead of rounding, would give 70,706.)
    ratings = pd.read_csv(ml_small / "ratings.csv").rename(
        columns={"userId": "user_id", "movieId": "item_id"}
    )
    train, test = stratified_split(ratings, ratio=0.75, filter_by="item", seed=42)
    counts = ratings["item_id"].value_counts()
    want_train = int(np.round(0.75 * counts.to_numpy()).sum())
    assert len(ratings) == 100_836
    assert (len(train), len(test)) == (want_train, len(ratings) - want_train)
    assert (len(train), len(test)) == (76_882, 23_954)
    per_item = train["item_id"].value_counts().reindex(counts.index, fill_value=0)
    assert (per_item.to_numpy() == np.round(0.75 * counts.to_numpy())).all()
    assert train.index.intersection(test.index).empty
    ref_train, ref_test = _reference_stratified(ratings, 0.75, "item_id", 42)
    pd.testing.assert_frame_equal(train, ref_train)
    pd.testing.assert_frame_equal(test, ref_test)
