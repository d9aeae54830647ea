"""The window's events summed in Spark over the lake's day files, so that they never sit
in one process: the pairs of jobs/prepare.py and the per-item scores of
jobs/item_stats.py.

The sums follow the pandas definitions term for term (models/confidence.py for pairs,
models/popularity.py for popularity and trending), so either engine gives the same pairs,
split and lists (tests/test_event_aggregates.py); only what is items- or pairs-sized
comes back. The daily DAG picks Spark from ``RECS_SPARK_AGGREGATE_MIN_EVENTS`` events in
the window on (jobs/daily.py), below which a JVM's start costs more than it saves.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from core.constants import EVENT_WEIGHTS
from models import popularity as pop
from models.confidence import RATING_FLOOR


@contextmanager
def _session(app: str, master: str | None, driver_memory: str) -> Iterator:
    from jobs.train_als import spark_session

    spark = spark_session(master, app=app, driver_memory=driver_memory, conf={
        # Timestamps as Parquet's microsecond type (not INT96), as the lake writes them.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"})
    try:
        yield spark
    finally:
        spark.stop()


def _events(spark, files: list[str], columns: list[str]):
    return spark.read.parquet(*files).select(*columns)


def pairs(files: list[str], scratch: Path, *, master: str | None = None,
          driver_memory: str = "2g") -> pd.DataFrame:
    """models.confidence.aggregate_pairs of the events of ``files``, summed in Spark:
    user_id, item_id, weight, timestamp (any order). The pairs pass through Parquet
    under ``scratch`` (a folder every executor sees; removed before returning)."""
    from pyspark.sql import functions as F

    with _session("recs-prepare", master, driver_memory) as spark:
        ev = _events(spark, files, ["user_id", "item_id", "event_type", "rating",
                                    "timestamp"])
        bad = (ev.where(~F.col("event_type").isin(list(EVENT_WEIGHTS)))
               .select("event_type").limit(1).collect())
        if bad:
            raise ValueError(f"unknown event_type {bad[0][0]!r}")
        base = F.create_map(*[x for kind, w in EVENT_WEIGHTS.items()
                              for x in (F.lit(kind), F.lit(float(w)))])[F.col("event_type")]
        rating = F.col("rating").cast("double")
        scale = F.when(rating.isNull() | F.isnan(rating), F.lit(1.0)).otherwise(
            F.greatest(rating / F.lit(5.0), F.lit(RATING_FLOOR)))
        summed = (ev.groupBy("user_id", "item_id")
                  .agg(F.sum(base * scale).alias("w"), F.max("timestamp").alias("timestamp")))
        # models.confidence.sublinear: weights above 1 grow as 1 + ln(w).
        weight = F.when(F.col("w") > 1.0, F.lit(1.0) + F.log(F.col("w"))).otherwise(F.col("w"))
        (summed.select("user_id", "item_id", weight.alias("weight"), "timestamp")
         .write.mode("overwrite").parquet(str(scratch)))
    try:
        return pd.read_parquet(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def item_scores(files: list[str], users_path: str | None, as_of: pd.Timestamp,
                recent_days: int, *, baseline_days: int = 28, min_recent: int = 2,
                master: str | None = None, driver_memory: str = "2g"):
    """jobs.item_stats.ItemScores of the events of ``files``, summed per item in Spark:
    decayed popularity, trending counts and, with a users file, popularity among each
    country's users (countries with events of at least MIN_COUNTRY_USERS users)."""
    from pyspark.sql import functions as F

    from jobs.item_stats import MIN_COUNTRY_USERS, ItemScores

    as_of_us = int(as_of.value // 1000)
    day_us = 86_400 * 1_000_000
    recent_start = as_of_us - recent_days * day_us
    base_start = recent_start - baseline_days * day_us
    with _session("recs-item-stats", master, driver_memory) as spark:
        ev = _events(spark, files, ["user_id", "item_id", "timestamp"])
        ts = F.unix_micros("timestamp")
        age_days = (F.lit(as_of_us) - ts).cast("double") / F.lit(1e6) / F.lit(86_400.0)
        ev = ev.select("user_id", "item_id", ts.alias("ts"), F.pow(
            F.lit(0.5), F.greatest(age_days, F.lit(0.0)) / F.lit(pop.HALF_LIFE_DAYS))
            .alias("w"))
        per_item = ev.groupBy("item_id").agg(
            F.sum("w").alias("w"),
            F.sum(((F.col("ts") >= recent_start) & (F.col("ts") < as_of_us)).cast("long"))
            .alias("recent"),
            F.sum(((F.col("ts") >= base_start) & (F.col("ts") < recent_start)).cast("long"))
            .alias("base")).toPandas().set_index("item_id")
        by_country: dict[str, pd.Series] = {}
        if users_path:
            users = (spark.read.parquet(users_path).select("user_id", "country")
                     .where(F.col("country").isNotNull()))
            joined = ev.join(users, "user_id")
            big = [r["country"] for r in joined.groupBy("country")
                   .agg(F.countDistinct("user_id").alias("n"))
                   .where(F.col("n") >= MIN_COUNTRY_USERS).collect()]
            if big:
                sums = (joined.where(F.col("country").isin(big))
                        .groupBy("country", "item_id").agg(F.sum("w").alias("w"))
                        .toPandas())
                for cc, part in sums.groupby("country"):
                    by_country[str(cc)] = pop.popularity_from_sums(
                        part.set_index("item_id")["w"].rename(None).rename_axis(None))
    per_item = per_item.rename_axis(None)
    popular = pop.popularity_from_sums(per_item["w"].astype("float64").rename(None))
    recent = per_item["recent"].rename(None)
    trend = pop.trending_from_counts(recent[recent > 0], per_item["base"].rename(None),
                                     recent_days, baseline_days, min_recent)
    return ItemScores(popular, trend, by_country)
