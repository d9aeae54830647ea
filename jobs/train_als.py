"""Spark MLlib ALS on implicit feedback.

``run()`` is the job: it reads (user, item, weight) pairs from Parquet, trains ALS with
seeded, typed parameters and writes user and item factors as Parquet. The Airflow DAG
submits it through the Spark provider (``spark-submit jobs/train_als.py ...``, the
master from the ``spark_default`` connection); ``recs evaluate`` calls the same
``train()`` in process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("recs.train_als")


@dataclass(frozen=True)
class AlsParams:
    rank: int = 32
    reg: float = 0.3
    alpha: float = 5.0
    iters: int = 15
    seed: int = 42

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.reg < 0 or self.alpha < 0:
            raise ValueError("reg and alpha must be >= 0")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")


@dataclass
class Factors:
    """ALS output: ids and factor matrices in matching row order."""

    user_ids: np.ndarray
    user_factors: np.ndarray
    item_ids: np.ndarray
    item_factors: np.ndarray


def spark_session(master: str | None = None, app: str = "recs-als", driver_memory: str = "2g",
                  conf: dict[str, str] | None = None):
    """A Spark session; the master comes from spark-submit or the argument; ``conf``:
    more settings."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if master and not os.environ.get("SPARK_SUBMIT_OPTS_FROM_SUBMIT"):
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return (builder.config("spark.driver.memory", driver_memory)
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.driver.extraJavaOptions", "-Dlog4j.rootLogger=WARN")
            .getOrCreate())


# Pairs per ALS block and per shuffle partition: sized from the data, never from the
# master's parallelism, so that a fit gives the same factors on any cluster.
PAIRS_PER_BLOCK = 2_000_000
MAX_BLOCKS = 64


def n_blocks(n_pairs: int) -> int:
    """ALS user and item blocks (and shuffle partitions) for ``n_pairs`` ratings."""
    return max(1, min(MAX_BLOCKS, math.ceil(n_pairs / PAIRS_PER_BLOCK)))


def _dense_ids(frame, column: str, alias: str):
    """(``column``, ``alias``): the sorted distinct ids of ``column`` numbered 0.. in id
    order, so the numbering is the same however the data is partitioned. The ids are
    sorted over range partitions and numbered by ``zipWithIndex`` (a count per
    partition, then offsets): no step moves every id into one partition."""
    ids = frame.select(column).distinct().orderBy(column)
    return ids.rdd.zipWithIndex().map(lambda row: (row[0][0], row[1])).toDF(
        f"{column} long, {alias} int")


def _collect_factors(factors, ids, column: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids in order and their factor rows (zeros for an id ALS gave no factor)."""
    from pyspark.sql import functions as F

    frame = (ids.join(factors.withColumnRenamed("id", "idx"),
                      ids[ids.columns[1]] == F.col("idx"), "left")
             .select(F.col(column).alias("id"), "features").toPandas()
             .sort_values("id", ignore_index=True))
    mat = np.zeros((len(frame), rank), dtype="float32")
    has = frame["features"].notna().to_numpy()
    if has.any():
        mat[has] = np.stack(frame["features"][has].to_numpy()).astype("float32")
    return frame["id"].to_numpy(dtype="int64"), mat


def checkpoint_dir(lake_root: str | Path) -> Path:
    """A fresh folder for one fit's checkpoints: ``<lake>/checkpoints/als/<run id>``."""
    return Path(lake_root) / "checkpoints" / "als" / uuid.uuid4().hex


def train(spark, pairs, params: AlsParams, checkpoint_dir: str | None = None) -> Factors:
    """Train implicit ALS on ``pairs`` (user_id, item_id, weight; a Spark or a pandas
    frame); return factors.

    Ids are mapped to dense int indices in Spark (ALS needs 32-bit ids), numbered in id
    order, and back afterwards, so any BIGINT id works. ``checkpoint_dir`` must be a
    folder every executor sees (the lake on a cluster); it is removed after the fit. Without
    one, a temporary folder on the driver is used (only right for a local master).
    """
    import shutil
    import tempfile

    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    if isinstance(pairs, pd.DataFrame):
        pairs = spark.createDataFrame(
            pairs[["user_id", "item_id", "weight"]].astype(
                {"user_id": "int64", "item_id": "int64", "weight": "float32"}),
            "user_id long, item_id long, weight float")
    n_pairs = pairs.count()
    blocks = n_blocks(n_pairs)
    spark.conf.set("spark.sql.shuffle.partitions", str(blocks))
    users = _dense_ids(pairs, "user_id", "u").cache()
    items = _dense_ids(pairs, "item_id", "i").cache()
    # The ratings in a fixed partitioning and order: ALS builds its blocks from them.
    ratings = (pairs.join(users, "user_id").join(items, "item_id")
               .select("u", "i", F.col("weight").cast("float").alias("w"))
               .repartition(blocks, "u").sortWithinPartitions("u", "i"))
    # Without checkpoints the lineage of 15+ iterations overflows the JVM stack when
    # tasks are serialised; checkpoint every few iterations into a folder that the
    # executors share (a folder on the driver is not seen by executors on other machines).
    scratch = Path(checkpoint_dir) if checkpoint_dir else Path(
        tempfile.mkdtemp(prefix="recs-als-ckpt-"))
    scratch.mkdir(parents=True, exist_ok=True)
    spark.sparkContext.setCheckpointDir(str(scratch))
    try:
        als = ALS(rank=params.rank, maxIter=params.iters, regParam=params.reg,
                  alpha=params.alpha, implicitPrefs=True, userCol="u", itemCol="i",
                  ratingCol="w", seed=params.seed, nonnegative=False,
                  numUserBlocks=blocks, numItemBlocks=blocks,
                  coldStartStrategy="drop", checkpointInterval=5)
        model = als.fit(ratings)
        user_ids, user_factors = _collect_factors(model.userFactors, users, "user_id",
                                                  params.rank)
        item_ids, item_factors = _collect_factors(model.itemFactors, items, "item_id",
                                                  params.rank)
    finally:
        users.unpersist()
        items.unpersist()
        shutil.rmtree(scratch, ignore_errors=True)
    return Factors(user_ids, user_factors, item_ids, item_factors)


def save_factors(factors: Factors, out_dir: Path) -> dict[str, str]:
    """Write factors as ``users.parquet`` and ``items.parquet`` (id, vector columns)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, ids, mat in (("users", factors.user_ids, factors.user_factors),
                           ("items", factors.item_ids, factors.item_factors)):
        frame = pd.DataFrame({"id": ids.astype("int64")})
        frame["vector"] = list(mat)
        path = out_dir / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        paths[name] = str(path)
    return paths


def load_factors(out_dir: Path) -> Factors:
    users = pd.read_parquet(Path(out_dir) / "users.parquet")
    items = pd.read_parquet(Path(out_dir) / "items.parquet")
    return Factors(users["id"].to_numpy(), np.stack(users["vector"].to_numpy()).astype("float32"),
                   items["id"].to_numpy(), np.stack(items["vector"].to_numpy()).astype("float32"))


def run(inputs: dict[str, str], out_dir: str, params: AlsParams, master: str | None = None,
        driver_memory: str = "2g", checkpoint_root: str | None = None
        ) -> dict[str, dict[str, str]]:
    """Train one model per named input (e.g. ``full`` and ``eval``); write their factors.

    Writes ``<out_dir>/<name>/{users,items}.parquet`` and ``<out_dir>/params.json``.
    The output folder is replaced atomically. The pairs are read by the executors
    (``spark.read.parquet``); checkpoints go to ``<checkpoint_root>/<run id>/`` (default
    ``<lake>/checkpoints/als``), which executors on other machines must see too.
    """
    from core import lake

    final = Path(out_dir)
    result: dict[str, dict[str, str]] = {}
    spark = spark_session(master, driver_memory=driver_memory)
    try:
        with lake.atomic_dir(final) as tmp:
            for name, path in inputs.items():
                started = time.perf_counter()
                pairs = spark.read.parquet(str(Path(path).resolve())).select(
                    "user_id", "item_id", "weight")
                ckpt = (Path(checkpoint_root) / uuid.uuid4().hex if checkpoint_root
                        else checkpoint_dir(lake.root()))
                factors = train(spark, pairs, params, checkpoint_dir=str(ckpt))
                save_factors(factors, tmp / name)
                log.info("ALS %s: %d users, %d items in %.1fs", name,
                         len(factors.user_ids), len(factors.item_ids),
                         time.perf_counter() - started)
                result[name] = {k: str(final / name / f"{k}.parquet")
                                for k in ("users", "items")}
            (tmp / "params.json").write_text(json.dumps(asdict(params), sort_keys=True))
    finally:
        spark.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    """spark-submit entry point: ``train_als.py --input full=PATH --out DIR --rank ...``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int, default=AlsParams.rank)
    p.add_argument("--reg", type=float, default=AlsParams.reg)
    p.add_argument("--alpha", type=float, default=AlsParams.alpha)
    p.add_argument("--iters", type=int, default=AlsParams.iters)
    p.add_argument("--seed", type=int, default=AlsParams.seed)
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="checkpoints' root, seen by every executor "
                        "(default <lake>/checkpoints/als)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    inputs = {}
    for spec in args.input:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--input {spec!r}: expected NAME=PATH")
        inputs[name] = path
    params = AlsParams(args.rank, args.reg, args.alpha, args.iters, args.seed)
    run(inputs, args.out, params, checkpoint_root=args.checkpoint_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
