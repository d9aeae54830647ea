"""Popularity and trending scores, and the popularity baseline's lists (pure compute on
event frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import DEFAULT_K

HALF_LIFE_DAYS = 30.0


def popularity(events: pd.DataFrame, as_of: pd.Timestamp,
               half_life_days: float = HALF_LIFE_DAYS) -> pd.Series:
    """Decayed count of distinct (user, item) engagements per item, as of ``as_of``."""
    age = (as_of - events["timestamp"]).dt.total_seconds() / 86_400.0
    w = np.power(0.5, np.clip(age.to_numpy(), 0, None) / half_life_days)
    return popularity_from_sums(pd.Series(w, index=events["item_id"].to_numpy())
                                .groupby(level=0).sum())


def counts(pairs: pd.DataFrame) -> pd.Series:
    """Number of users per item (the classic popularity baseline)."""
    return pairs.groupby("item_id")["user_id"].nunique().sort_values(ascending=False,
                                                                    kind="stable")


def trending(events: pd.DataFrame, as_of: pd.Timestamp, recent_days: int = 7,
             baseline_days: int = 28, min_recent: int = 2) -> pd.Series:
    """Items gaining attention: recent daily rate against the preceding baseline rate.

    score = (recent_rate - baseline_rate) / sqrt(baseline_rate + 1/recent_days), over items
    with at least ``min_recent`` recent events; highest first.
    """
    t = events["timestamp"]
    recent_start = as_of - pd.Timedelta(days=recent_days)
    base_start = recent_start - pd.Timedelta(days=baseline_days)
    recent = events.loc[(t >= recent_start) & (t < as_of), "item_id"].value_counts()
    base = events.loc[(t >= base_start) & (t < recent_start), "item_id"].value_counts()
    return trending_from_counts(recent, base, recent_days, baseline_days, min_recent)


def trending_from_counts(recent: pd.Series, base: pd.Series, recent_days: int = 7,
                         baseline_days: int = 28, min_recent: int = 2) -> pd.Series:
    """:func:`trending` from each item's event counts in the recent and the baseline
    window (item id -> count; an item absent from ``base`` had none). Ties rank in item
    id order, so the counts may come from anywhere (pandas, Spark) in any order."""
    recent = recent[recent >= min_recent].sort_index()
    if recent.empty:
        return pd.Series(dtype="float64")
    r_rate = recent / recent_days
    b_rate = base.reindex(recent.index, fill_value=0) / baseline_days
    score = (r_rate - b_rate) / np.sqrt(b_rate + 1.0 / recent_days)
    score = score[score > 0]
    return score.sort_values(ascending=False, kind="stable")


def popularity_from_sums(sums: pd.Series) -> pd.Series:
    """:func:`popularity` from each item's sum of decayed weights (item id -> sum), in
    the same order: highest first, ties in item id order."""
    return sums.sort_index().sort_values(ascending=False, kind="stable")


def popularity_predictions(train: pd.DataFrame, test_users: np.ndarray,
                           k: int = DEFAULT_K) -> pd.DataFrame:
    """Most popular training items per test user, that user's training items excluded."""
    ranked = counts(train)
    top_items = ranked.index.to_numpy()
    top_scores = ranked.to_numpy(dtype="float64")
    seen = train.groupby("user_id")["item_id"].apply(set)
    out_u, out_i, out_s = [], [], []
    for u in test_users:
        s = seen.get(u, set())
        n = 0
        for item, score in zip(top_items, top_scores, strict=True):
            if item in s:
                continue
            out_u.append(u)
            out_i.append(item)
            out_s.append(score)
            n += 1
            if n == k:
                break
    return pd.DataFrame({"user_id": out_u, "item_id": out_i, "score": out_s})
