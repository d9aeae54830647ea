"""Turn extracted events into (user, item, weight) pairs and a seeded held-out split.

Writes ``pairs/dt=<date>/{full,train,test}.parquet``. ``full`` trains the published
models; ``train``/``test`` are the evaluation split (the Microsoft Recommenders protocol:
stratified by item, seeded), so the gate and ``recs evaluate`` measure the same thing.
The learned ranker is cross-fitted on the test users' candidates (models/funnel.py), each
user scored by a ranker that never saw that user's test pairs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from core import lake
from models.confidence import aggregate_pairs
from models.split import per_user_time_split, stratified_split, time_split


def split_pairs(pairs: pd.DataFrame, how: str, holdout: float, seed: int):
    """(train, test) of ``pairs`` by the named protocol: 'stratified' (Microsoft
    Recommenders' random split per item), 'time' (one global cut: the newest pairs are
    held out) or 'chrono' (each user's newest pairs are held out)."""
    if how == "stratified":
        return stratified_split(pairs, ratio=1.0 - holdout, filter_by="item", seed=seed)
    if how == "time":
        return time_split(pairs, ratio=1.0 - holdout)
    if how == "chrono":
        return per_user_time_split(pairs, ratio=1.0 - holdout)
    raise ValueError(f"split must be 'stratified', 'time' or 'chrono', got {how!r}")


def run(day: dt.date, events: list[str], *, holdout: float, seed: int,
        split: str = "stratified", lake_root: Path | None = None, engine: str = "pandas",
        spark_master: str | None = None, driver_memory: str = "2g") -> dict:
    """Pairs of the window's event files (jobs/extract.py:window_files, oldest first).

    ``engine``: 'pandas' reads the events into this process; 'spark' sums them into pairs
    in Spark (jobs/event_aggregates.py), so that only the pairs, not the events, reach
    this process. Both give the same pairs and the same split.
    """
    if engine not in ("pandas", "spark"):
        raise ValueError(f"engine must be 'pandas' or 'spark', got {engine!r}")
    out = lake.partition("pairs", day, lake_root)
    with lake.atomic_dir(out) as tmp:
        if engine == "spark":
            from jobs import event_aggregates

            pairs = event_aggregates.pairs(events, tmp / "aggregated", master=spark_master,
                                           driver_memory=driver_memory)
        else:
            from jobs.extract import read_events

            frame = read_events(events)
            pairs = aggregate_pairs(frame) if len(frame) else frame
            del frame
        if pairs.empty:
            raise ValueError(f"no events in the window ending {day} ({len(events)} day "
                             "files); nothing to train on")
        # Sorted by (user, item): the pairs do not depend on how the window's days were
        # cut, nor on the engine that summed them.
        pairs = pairs.sort_values(["user_id", "item_id"], ignore_index=True)
        train, test = split_pairs(pairs, split, holdout, seed)
        # Microsecond timestamps (Postgres' precision): Spark reads no nanoseconds.
        for name, frame in (("full", pairs), ("train", train), ("test", test)):
            frame.to_parquet(tmp / f"{name}.parquet", index=False, coerce_timestamps="us")
    return {**{name: str(out / f"{name}.parquet")
               for name in ("full", "train", "test")},
            "n_pairs": len(pairs),
            "n_users": int(pairs["user_id"].nunique()),
            "n_items": int(pairs["item_id"].nunique()),
            "engine": engine}
