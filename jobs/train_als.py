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
import os
import sys
import time
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


def train(spark, pairs: pd.DataFrame, params: AlsParams) -> Factors:
    """Train implicit ALS on ``pairs`` (user_id, item_id, weight); return factors.

    Ids are mapped to dense int indices before Spark (ALS needs 32-bit ids) and back
    afterwards, so any BIGINT id works.
    """
    from pyspark.ml.recommendation import ALS

    users, u_idx = np.unique(pairs["user_id"].to_numpy(), return_inverse=True)
    items, i_idx = np.unique(pairs["item_id"].to_numpy(), return_inverse=True)
    frame = pd.DataFrame({"u": u_idx.astype("int32"), "i": i_idx.astype("int32"),
                          "w": pairs["weight"].to_numpy(dtype="float32")})
    sdf = spark.createDataFrame(frame)
    # Without checkpoints the lineage of 15+ iterations overflows the JVM stack when
    # tasks are serialised; checkpoint every few iterations into a scratch folder.
    if not spark.sparkContext.getCheckpointDir():
        import atexit
        import shutil
        import tempfile

        ckpt = tempfile.mkdtemp(prefix="recs-als-ckpt-")
        atexit.register(shutil.rmtree, ckpt, ignore_errors=True)
        spark.sparkContext.setCheckpointDir(ckpt)
    # More partitions than cores gives no speed here and costs shuffle overhead.
    n_blocks = max(1, min(4, spark.sparkContext.defaultParallelism))
    als = ALS(rank=params.rank, maxIter=params.iters, regParam=params.reg,
              alpha=params.alpha, implicitPrefs=True, userCol="u", itemCol="i",
              ratingCol="w", seed=params.seed, nonnegative=False,
              numUserBlocks=n_blocks, numItemBlocks=n_blocks,
              coldStartStrategy="drop", checkpointInterval=5)
    model = als.fit(sdf)
    uf = model.userFactors.toPandas().sort_values("id")
    itf = model.itemFactors.toPandas().sort_values("id")
    user_factors = np.zeros((len(users), params.rank), dtype="float32")
    item_factors = np.zeros((len(items), params.rank), dtype="float32")
    user_factors[uf["id"].to_numpy()] = np.stack(uf["features"].to_numpy()).astype("float32")
    item_factors[itf["id"].to_numpy()] = np.stack(itf["features"].to_numpy()).astype("float32")
    return Factors(users, user_factors, items, item_factors)


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
        driver_memory: str = "2g") -> dict[str, dict[str, str]]:
    """Train one model per named input (e.g. ``full`` and ``eval``); write their factors.

    Writes ``<out_dir>/<name>/{users,items}.parquet`` and ``<out_dir>/params.json``.
    The output folder is replaced atomically.
    """
    from core import lake

    final = Path(out_dir)
    result: dict[str, dict[str, str]] = {}
    spark = spark_session(master, driver_memory=driver_memory)
    try:
        with lake.atomic_dir(final) as tmp:
            for name, path in inputs.items():
                started = time.perf_counter()
                pairs = pd.read_parquet(path, columns=["user_id", "item_id", "weight"])
                factors = train(spark, pairs, params)
                save_factors(factors, tmp / name)
                log.info("ALS %s: %d users, %d items, %d pairs in %.1fs", name,
                         len(factors.user_ids), len(factors.item_ids), len(pairs),
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    inputs = {}
    for spec in args.input:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--input {spec!r}: expected NAME=PATH")
        inputs[name] = path
    params = AlsParams(args.rank, args.reg, args.alpha, args.iters, args.seed)
    run(inputs, args.out, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
