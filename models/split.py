"""Train/test splits of interaction frames (pure compute: frames in, frames out).

``stratified_split`` reproduces Microsoft recommenders 1.2.1
``python_stratified_split`` (``recommenders/datasets/python_splitters.py``,
``_do_stratification`` with ``is_random=True``, the vectorised form introduced by
recommenders PR #1802). Its algorithm, step by step:

1. ``process_split_ratio``: a float ratio must lie strictly between 0 and 1; the two
   split fractions are ``[ratio, 1 - ratio]`` and their thresholds ``np.cumsum`` of that.
2. ``np.random.seed(seed)``; ``np.random.rand(len(data))``: one uniform draw per row, in
   the frame's row order.
3. ``data.sort_values([group_col, "random"])``: rows ordered by group, then by draw.
4. ``count`` = rows in the group, ``rank`` = ``groupby(group_col).cumcount() + 1``.
5. Split *j* keeps ``round(threshold[j-1] * count) < rank <= round(threshold[j] * count)``,
   where ``round`` of a float Series is numpy's half-to-even rounding. With
   ``ratio=0.75`` a group of 2 rows gives ``round(1.5) = 2`` train rows and 0 test rows,
   a group of 6 gives ``round(4.5) = 4`` and 2.

The returned frames are in recommenders' order: sorted by group key, then by draw
(NOT by original index); index labels are kept. Call ``.sort_index()`` for file order.

``per_user_time_split`` is recommenders' ``python_chrono_split(filter_by="user")`` with
the same rounding; ``time_split`` is a global cut at one point in time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import ITEM_COL, USER_COL

DEFAULT_TS_COL = "timestamp"
"""Timestamp column of the splitters (MovieLens ``ratings.csv`` names it so)."""


class SplitError(ValueError):
    """A split was asked for with a bad ratio, mode or column."""


def _check_ratio(ratio: float) -> float:
    # recommenders' process_split_ratio: a float strictly between 0 and 1.
    if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.floating):
        raise SplitError(f"ratio={ratio!r}: expected a float between 0 and 1")
    if not 0.0 < float(ratio) < 1.0:
        raise SplitError(f"ratio={ratio!r}: must be strictly between 0 and 1")
    return float(ratio)


def _check_columns(df: pd.DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SplitError(f"missing column(s) {missing}; frame has {list(df.columns)}")
    for c in cols:
        if df[c].isna().any():
            raise SplitError(f"column {c!r} has {int(df[c].isna().sum())} missing value(s)")


def _stratify(
    df: pd.DataFrame, group_col: str, order: np.ndarray | pd.Series, ratio: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per group, rows ordered by ``order``: the first round(ratio * n) train, the rest test."""
    keys = pd.DataFrame({"g": df[group_col].to_numpy(), "o": np.asarray(order)})
    # Multi-column sort_values is a stable lexsort, as in recommenders.
    keys = keys.sort_values(["g", "o"])
    grouped = keys.groupby("g", sort=False)
    rank = grouped.cumcount().to_numpy() + 1
    count = grouped["g"].transform("size").to_numpy()
    low, high = np.cumsum([ratio, 1 - ratio])
    # np.round is half-to-even, as Python's round() of a pandas Series.
    cut_train = np.round(low * count)
    cut_test = np.round(high * count)
    positions = keys.index.to_numpy()  # row positions of df, in split order
    train = df.iloc[positions[rank <= cut_train]]
    test = df.iloc[positions[(rank > cut_train) & (rank <= cut_test)]]
    return train, test


def stratified_split(
    df: pd.DataFrame,
    ratio: float = 0.75,
    filter_by: str = "item",
    seed: int = 42,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random split stratified by item (or user): ``python_stratified_split`` of recommenders.

    For the same frame, ratio, ``filter_by`` and seed, the train and test frames equal
    recommenders 1.2.1's, row for row and in the same order (group key, then random draw).

    Deviations, none of which changes the rows returned for a valid frame:
    the draws come from a private ``np.random.RandomState(seed)`` (the same stream as
    ``np.random.seed(seed); np.random.rand(n)``) so numpy's global state is left alone;
    the input frame is not modified (recommenders adds a ``random`` column to it) and
    columns named ``random``/``count``/``rank`` survive; a missing user or item id raises
    :class:`SplitError` (recommenders silently drops such rows); ``min_rating`` filtering
    and list ratios (multi-way splits) are not offered.
    """
    ratio = _check_ratio(ratio)
    if filter_by not in ("user", "item"):
        raise SplitError(f"filter_by={filter_by!r}: expected 'user' or 'item'")
    _check_columns(df, col_user, col_item)
    draws = np.random.RandomState(seed).rand(len(df))
    group_col = col_user if filter_by == "user" else col_item
    return _stratify(df, group_col, draws, ratio)


def per_user_time_split(
    df: pd.DataFrame,
    ratio: float = 0.75,
    col_user: str = USER_COL,
    col_timestamp: str = DEFAULT_TS_COL,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's earliest round(ratio * n) events to train, the rest to test.

    recommenders' ``python_chrono_split(filter_by="user")``: rows sorted by user, then
    timestamp (ties keep frame order), rounding half to even; rows come back in that order.
    """
    ratio = _check_ratio(ratio)
    _check_columns(df, col_user, col_timestamp)
    return _stratify(df, col_user, df[col_timestamp], ratio)


def time_split(
    df: pd.DataFrame, ratio: float = 0.75, col_timestamp: str = DEFAULT_TS_COL
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Global time split: the earliest round(ratio * n) events train, the later ones test.

    Events are ordered by timestamp with ties in frame order (a stable sort), so a tie at
    the cut may fall on both sides. Both frames come back in that chronological order.
    """
    ratio = _check_ratio(ratio)
    _check_columns(df, col_timestamp)
    order = np.argsort(df[col_timestamp].to_numpy(), kind="stable")
    n_train = int(np.round(ratio * len(df)))
    return df.iloc[order[:n_train]], df.iloc[order[n_train:]]
