"""Item popularity, global trending and trending per category for one logical date.

Writes ``item_stats/dt=<date>/{popularity,trending}.parquet``; the trending frame holds
every named list ('popular', 'trending', 'trending:category:<name>') as rows of
(list_name, rank, item_id, score, reason).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from core import lake
from core.constants import POPULAR_REASON
from models import popularity as pop

MIN_COUNTRY_USERS = 5


def build_lists(events: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp, k: int,
                recent_days: int, users: pd.DataFrame | None = None) -> pd.DataFrame:
    """All non-personal lists as one long frame.

    'popular' (decayed popularity), 'trending' (filled up from popularity in quiet
    periods), 'trending:category:<c>' and, for countries with at least
    MIN_COUNTRY_USERS users with events, 'trending:country:<CC>' (popularity among that
    country's users, reason "Popular in <CC>").
    """
    popular = pop.popularity(events, as_of)
    trend = pop.trending(events, as_of, recent_days=recent_days)
    # Quiet periods have too few recent events to trend: fill up from popularity.
    trend_full = pd.concat([trend, popular[~popular.index.isin(trend.index)] * 0.0])
    category = items.set_index("item_id")["category"]
    rows = []

    def add(name: str, scores: pd.Series, reason: str) -> None:
        top = scores.head(k)
        for rank, (item, score) in enumerate(top.items(), start=1):
            rows.append((name, rank, int(item), float(score), reason))

    add("popular", popular, POPULAR_REASON)
    add("trending", trend_full, "Trending now")
    cats = category.reindex(trend_full.index)
    for cat in sorted(c for c in cats.dropna().unique()):
        add(f"trending:category:{cat}", trend_full[cats == cat], f"Trending in {cat}")
    if users is not None and not users.empty:
        country = users.dropna(subset=["country"]).set_index("user_id")["country"]
        ev_country = country.reindex(events["user_id"].to_numpy()).to_numpy()
        for cc in sorted(pd.unique(country)):
            mask = ev_country == cc
            if events.loc[mask, "user_id"].nunique() < MIN_COUNTRY_USERS:
                continue
            add(f"trending:country:{cc}", pop.popularity(events[mask], as_of),
                f"Popular in {cc}")
    return pd.DataFrame(rows, columns=["list_name", "rank", "item_id", "score", "reason"])


def run(day: dt.date, events: list[str], items_path: str, *, k: int, recent_days: int,
        data_end: str, users_path: str | None = None, lake_root: Path | None = None) -> dict:
    """The lists of the window's event files (jobs/extract.py:window_files)."""
    from jobs.extract import read_events

    events = read_events(events, ["user_id", "item_id", "timestamp"])
    items = pd.read_parquet(items_path, columns=["item_id", "category"])
    users = pd.read_parquet(users_path) if users_path else None
    as_of = pd.Timestamp(data_end)
    lists = build_lists(events, items, as_of, k, recent_days, users)
    popularity = pop.popularity(events, as_of).rename("popularity").rename_axis("item_id")
    out = lake.partition("item_stats", day, lake_root)
    with lake.atomic_dir(out) as tmp:
        lists.to_parquet(tmp / "lists.parquet", index=False)
        popularity.reset_index().to_parquet(tmp / "popularity.parquet", index=False)
    return {"lists": str(out / "lists.parquet"), "popularity": str(out / "popularity.parquet"),
            "n_lists": int(lists["list_name"].nunique())}
