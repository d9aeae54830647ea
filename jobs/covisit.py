"""Item-item co-visitation counted in Spark.

Per user, the user's pairs are put in order of (timestamp, item_id); two items co-visit
when their positions differ by 1..``window``. Each unordered co-visit counts once per
user and is emitted in both directions. ``count(a, b)`` is the number of users in which
a and b co-visit, and ``score(a, b) = count(a, b) / sqrt(n_a * n_b)`` with ``n_x`` the
number of distinct users with item x. Pairs seen in fewer than ``min_count`` users are
dropped, and each item keeps its ``top`` neighbours by score (ties: lower neighbour_id).

``count()`` is the computation (a pandas frame in, a pandas frame out); ``run()`` is the
job: it reads pairs from Parquet and writes ``covisit.parquet`` and ``meta.json`` into
an output folder that appears atomically. Airflow submits it through the Spark provider
(``spark-submit jobs/covisit.py --input full=PATH --input eval=PATH ... --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("recs.covisit")

COLUMNS = ("item_id", "neighbour_id", "score", "count")


@dataclass(frozen=True)
class CovisitParams:
    window: int = 20
    top: int = 100
    min_count: int = 2

    def __post_init__(self) -> None:
        for name in ("window", "top", "min_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"item_id": pd.Series(dtype="int64"),
                         "neighbour_id": pd.Series(dtype="int64"),
                         "score": pd.Series(dtype="float32"),
                         "count": pd.Series(dtype="int64")})


def _ordering_frame(pairs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Dense user and item indices (int32) and the timestamp as int64 nanoseconds.

    Spark timestamps keep microseconds only, so the order is taken from nanoseconds.
    Returns the frame (u, i, ts) and the item ids indexed by ``i``.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lack column(s) {missing}; have {list(pairs.columns)}")
    for col in ("user_id", "item_id", "timestamp"):
        n_null = int(pairs[col].isna().sum())
        if n_null:
            raise ValueError(f"pairs.{col} has {n_null} missing value(s)")
    _, u_idx = np.unique(pairs["user_id"].to_numpy(dtype="int64"), return_inverse=True)
    items, i_idx = np.unique(pairs["item_id"].to_numpy(dtype="int64"), return_inverse=True)
    ts = pd.to_datetime(pairs["timestamp"], utc=True).dt.as_unit("ns")
    frame = pd.DataFrame({"u": u_idx.astype("int32"), "i": i_idx.astype("int32"),
                          "ts": ts.astype("int64").to_numpy()})
    return frame, items


def _spark_ordering(spark, pairs):
    """:func:`_ordering_frame` of a Spark frame (from ``spark.read.parquet``): user ids as
    they are (only a key), dense item indices in id order and the timestamp as int64
    nanoseconds (a timestamp column is in microseconds; a long one is taken as
    nanoseconds, which is how Spark reads a nanosecond Parquet timestamp with
    ``spark.sql.legacy.parquet.nanosAsLong``). Returns the Spark frame (u, i, ts) and the
    item ids indexed by ``i``."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lack column(s) {missing}; have {list(pairs.columns)}")
    nulls = pairs.select([F.sum(F.col(c).isNull().cast("long")).alias(c)
                          for c in ("user_id", "item_id", "timestamp")]).first()
    for col in ("user_id", "item_id", "timestamp"):
        if nulls[col]:
            raise ValueError(f"pairs.{col} has {nulls[col]} missing value(s)")
    if isinstance(pairs.schema["timestamp"].dataType, LongType):
        ts = F.col("timestamp")
    else:
        ts = F.unix_micros(F.col("timestamp").cast("timestamp")) * F.lit(1000)
    # The catalog's ids fit in the driver; users never come there.
    items = np.sort(np.array([r[0] for r in pairs.select(F.col("item_id").cast("long"))
                              .distinct().collect()], dtype="int64"))
    index = spark.createDataFrame(
        pd.DataFrame({"item_id": items, "i": np.arange(len(items), dtype="int32")}),
        "item_id long, i int")
    frame = (pairs.select(F.col("user_id").cast("long").alias("u"),
                          F.col("item_id").cast("long").alias("item_id"),
                          ts.alias("ts"))
             .join(F.broadcast(index), "item_id").select("u", "i", "ts"))
    return frame, items


def count(spark, pairs, *, window: int = 20, top: int = 100,
          min_count: int = 2) -> pd.DataFrame:
    """Co-visitation neighbours of every item in ``pairs`` (user_id, item_id, timestamp;
    a pandas frame or a Spark frame).

    Returns item_id (int64), neighbour_id (int64), score (float32), count (int64), sorted
    by item_id, score descending, neighbour_id. Scores are ranked in double precision
    before the cast to float32.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    params = CovisitParams(window, top, min_count)
    if isinstance(pairs, pd.DataFrame):
        frame, items = _ordering_frame(pairs)
        if frame.empty:
            return _empty()
        sdf = spark.createDataFrame(frame, "u int, i int, ts long")
    else:
        sdf, items = _spark_ordering(spark, pairs)
        if not len(items):
            return _empty()
    # With one row per (user, item) an unordered pair occurs at most once per user, and
    # the shuffle that removes repeats can be skipped.
    repeats = bool(sdf.groupBy("u", "i").count().where(F.col("count") > 1).limit(1).count())

    in_order = Window.partitionBy("u").orderBy("ts", "i")
    pos = sdf.select("u", "i", F.row_number().over(in_order).alias("pos"))
    # Self-join on user and position: each row meets the rows 1..window places after
    # it, as an equi-join on (u, pos + d), so no user's full cross product is built.
    ahead = (pos.select("u", F.col("i").alias("a"), "pos",
                        F.explode(F.sequence(F.lit(1), F.lit(params.window))).alias("d"))
             .select("u", "a", (F.col("pos") + F.col("d")).alias("pos")))
    later = pos.select("u", F.col("i").alias("b"), "pos")
    # A shuffle join on (u, pos): no side is broadcast, so no executor (nor the driver)
    # holds the whole history.
    visits = (ahead.join(later, ["u", "pos"])
              .where(F.col("a") != F.col("b"))
              # An unordered pair as one long key: lower index high, higher index low.
              .select("u", (F.least("a", "b").cast("long") * F.lit(1 << 32)
                            + F.greatest("a", "b")).alias("key")))
    if repeats:
        visits = visits.distinct()
    counts = (visits.groupBy("key").agg(F.count(F.lit(1)).alias("count"))
              .where(F.col("count") >= params.min_count)
              .select(F.shiftright("key", 32).cast("int").alias("lo"),
                      (F.col("key") % F.lit(1 << 32)).cast("int").alias("hi"), "count"))
    users_per_item = (sdf.select("u", "i").distinct() if repeats else sdf).groupBy("i").agg(
        F.count(F.lit(1)).alias("n"))
    n_lo = users_per_item.select(F.col("i").alias("lo"), F.col("n").alias("n_lo"))
    n_hi = users_per_item.select(F.col("i").alias("hi"), F.col("n").alias("n_hi"))
    scored = (counts.join(F.broadcast(n_lo), "lo").join(F.broadcast(n_hi), "hi")
              .select("lo", "hi", "count",
                      (F.col("count") / F.sqrt((F.col("n_lo") * F.col("n_hi")).cast("double")))
                      .alias("score")))
    # Both directions from one pass (a union would compute ``scored`` twice).
    both = scored.select(F.explode(F.array(
        F.struct(F.col("lo").alias("item"), F.col("hi").alias("nb"), "score", "count"),
        F.struct(F.col("hi").alias("item"), F.col("lo").alias("nb"), "score", "count"),
    )).alias("e")).select("e.*")
    # Dense indices are in id order, so ordering by index is ordering by id.
    rank = Window.partitionBy("item").orderBy(F.col("score").desc(), "nb")
    kept = (both.withColumn("rank", F.row_number().over(rank))
            .where(F.col("rank") <= params.top).drop("rank"))
    out = kept.toPandas()
    if out.empty:
        return _empty()
    out = out.sort_values(["item", "score", "nb"], ascending=[True, False, True],
                          ignore_index=True)
    return pd.DataFrame({"item_id": items[out["item"].to_numpy()].astype("int64"),
                         "neighbour_id": items[out["nb"].to_numpy()].astype("int64"),
                         "score": out["score"].to_numpy(dtype="float32"),
                         "count": out["count"].to_numpy(dtype="int64")})


def run(pairs_path: str, out_dir: str, *, window: int = 20, top: int = 100,
        min_count: int = 2, master: str | None = None,
        driver_memory: str = "2g") -> dict[str, str | int]:
    """Read pairs from Parquet, count co-visits, write ``<out_dir>/covisit.parquet``.

    ``<out_dir>/meta.json`` holds the parameters, ``n_pairs`` (input rows), ``n_items``
    (items with at least one neighbour), ``n_rows`` (output rows) and ``seconds``. The
    output folder is replaced atomically. Returns the two paths and the counts.
    """
    out = run_many({"": pairs_path}, out_dir, window=window, top=top, min_count=min_count,
                   master=master, driver_memory=driver_memory)
    return out[""]


def run_many(inputs: dict[str, str], out_dir: str, *, window: int = 20, top: int = 100,
             min_count: int = 2, master: str | None = None,
             driver_memory: str = "2g") -> dict[str, dict[str, str | int]]:
    """:func:`run` for several named pair files in one Spark session: each goes to
    ``<out_dir>/<name>/`` (the daily DAG's full, eval and rank fits)."""
    from core import lake
    from jobs.train_als import spark_session

    params = CovisitParams(window, top, min_count)
    for source in inputs.values():
        if not Path(source).exists():
            raise FileNotFoundError(f"pairs file not found: {source}")
    spark = spark_session(master, app="recs-covisit", driver_memory=driver_memory, conf={
        # Pairs written by pandas keep nanoseconds, which Spark reads only as longs.
        "spark.sql.legacy.parquet.nanosAsLong": "true"})
    results = {}
    try:
        for name, source in inputs.items():
            final = Path(out_dir) / name if name else Path(out_dir)
            started = time.perf_counter()
            pairs = spark.read.parquet(str(Path(source).resolve())).select(
                "user_id", "item_id", "timestamp")
            table = count(spark, pairs, **asdict(params))
            meta = {"params": asdict(params), "n_pairs": pairs.count(),
                    "n_items": int(table["item_id"].nunique()), "n_rows": len(table),
                    "seconds": round(time.perf_counter() - started, 3)}
            with lake.atomic_dir(final) as tmp:
                table.to_parquet(tmp / "covisit.parquet", index=False)
                (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=2))
            log.info("co-visitation %s: %d pairs -> %d items, %d neighbours in %.1fs",
                     name or source, meta["n_pairs"], meta["n_items"], meta["n_rows"],
                     meta["seconds"])
            results[name] = {"covisit": str(final / "covisit.parquet"),
                             "meta": str(final / "meta.json"), "n_pairs": meta["n_pairs"],
                             "n_items": meta["n_items"], "n_rows": meta["n_rows"]}
    finally:
        spark.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``covisit.py --pairs PATH --out DIR [--window N ...]``,
    or ``--input NAME=PATH`` (repeatable) to write ``DIR/NAME/`` per input."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", metavar="PATH", help="Parquet of pairs")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                   help="a named Parquet of pairs (repeatable); output in DIR/NAME")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--window", type=int, default=CovisitParams.window, metavar="N")
    p.add_argument("--top", type=int, default=CovisitParams.top, metavar="N")
    p.add_argument("--min-count", type=int, default=CovisitParams.min_count, metavar="N")
    args = p.parse_args(argv)
    for flag, value in (("--window", args.window), ("--top", args.top),
                        ("--min-count", args.min_count)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if bool(args.pairs) == bool(args.input):
        p.error("give either --pairs PATH or one or more --input NAME=PATH")
    inputs = {"": args.pairs} if args.pairs else {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"--input: expected NAME=PATH, got {item!r}")
        inputs[name] = path
    for flag, path in inputs.items():
        if not Path(path).exists():
            p.error(f"{'--input ' + flag if flag else '--pairs'}: file not found: {path}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_many(inputs, args.out, window=args.window, top=args.top, min_count=args.min_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
