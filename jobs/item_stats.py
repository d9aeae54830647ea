"""Item popularity, global trending and trending per category for one logical date.

Writes ``item_stats/dt=<date>/{popularity,trending}.parquet``; the trending frame holds
every named list ('popular', 'trending', 'trending:category:<name>') as rows of
(list_name, rank, item_id, score, reason).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core import lake
from core.constants import POPULAR_REASON
from models import popularity as pop

MIN_COUNTRY_USERS = 5


@dataclass(frozen=True)
class ItemScores:
    """The scores the lists are cut from: decayed popularity, trending, and popularity
    among each country's users (countries with at least MIN_COUNTRY_USERS users with
    events), each an item id -> score Series, highest first."""

    popular: pd.Series
    trend: pd.Series
    by_country: dict[str, pd.Series] = field(default_factory=dict)


def scores_of_events(events: pd.DataFrame, as_of: pd.Timestamp, recent_days: int,
                     users: pd.DataFrame | None = None) -> ItemScores:
    """:class:`ItemScores` of an event frame in this process."""
    by_country = {}
    if users is not None and not users.empty:
        country = users.dropna(subset=["country"]).set_index("user_id")["country"]
        ev_country = country.reindex(events["user_id"].to_numpy()).to_numpy()
        for cc in sorted(pd.unique(country)):
            mask = ev_country == cc
            if events.loc[mask, "user_id"].nunique() < MIN_COUNTRY_USERS:
                continue
            by_country[cc] = pop.popularity(events[mask], as_of)
    return ItemScores(pop.popularity(events, as_of),
                      pop.trending(events, as_of, recent_days=recent_days), by_country)


def lists_of_scores(scores: ItemScores, items: pd.DataFrame, k: int) -> pd.DataFrame:
    """All non-personal lists as one long frame.

    'popular' (decayed popularity), 'trending' (filled up from popularity in quiet
    periods), 'trending:category:<c>' and 'trending:country:<CC>' (popularity among that
    country's users, reason "Popular in <CC>").
    """
    popular, trend = scores.popular, scores.trend
    # Quiet periods have too few recent events to trend: fill up from popularity.
    trend_full = pd.concat([trend, popular[~popular.index.isin(trend.index)] * 0.0])
    category = items.set_index("item_id")["category"]
    rows = []

    def add(name: str, values: pd.Series, reason: str) -> None:
        top = values.head(k)
        for rank, (item, score) in enumerate(top.items(), start=1):
            rows.append((name, rank, int(item), float(score), reason))

    add("popular", popular, POPULAR_REASON)
    add("trending", trend_full, "Trending now")
    cats = category.reindex(trend_full.index)
    for cat in sorted(c for c in cats.dropna().unique()):
        add(f"trending:category:{cat}", trend_full[cats == cat], f"Trending in {cat}")
    for cc in sorted(scores.by_country):
        add(f"trending:country:{cc}", scores.by_country[cc], f"Popular in {cc}")
    return pd.DataFrame(rows, columns=["list_name", "rank", "item_id", "score", "reason"])


def build_lists(events: pd.DataFrame, items: pd.DataFrame, as_of: pd.Timestamp, k: int,
                recent_days: int, users: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`lists_of_scores` of an event frame."""
    return lists_of_scores(scores_of_events(events, as_of, recent_days, users), items, k)


def run(day: dt.date, events: list[str], items_path: str, *, k: int, recent_days: int,
        data_end: str, users_path: str | None = None, lake_root: Path | None = None,
        engine: str = "pandas", spark_master: str | None = None,
        driver_memory: str = "2g") -> dict:
    """The lists of the window's event files (jobs/extract.py:window_files).

    ``engine``: 'pandas' reads the events into this process; 'spark' aggregates them per
    item in Spark (jobs/event_aggregates.py), so only per-item figures reach this
    process. Both give the same lists.
    """
    items = pd.read_parquet(items_path, columns=["item_id", "category"])
    as_of = pd.Timestamp(data_end)
    if engine == "spark":
        from jobs import event_aggregates

        scores = event_aggregates.item_scores(events, users_path, as_of, recent_days,
                                              master=spark_master,
                                              driver_memory=driver_memory)
    elif engine == "pandas":
        from jobs.extract import read_events

        frame = read_events(events, ["user_id", "item_id", "timestamp"])
        users = pd.read_parquet(users_path) if users_path else None
        scores = scores_of_events(frame, as_of, recent_days, users)
    else:
        raise ValueError(f"engine must be 'pandas' or 'spark', got {engine!r}")
    lists = lists_of_scores(scores, items, k)
    popularity = scores.popular.rename("popularity").rename_axis("item_id")
    out = lake.partition("item_stats", day, lake_root)
    with lake.atomic_dir(out) as tmp:
        lists.to_parquet(tmp / "lists.parquet", index=False)
        popularity.reset_index().to_parquet(tmp / "popularity.parquet", index=False)
    return {"lists": str(out / "lists.parquet"), "popularity": str(out / "popularity.parquet"),
            "n_lists": int(lists["list_name"].nunique()), "engine": engine}
