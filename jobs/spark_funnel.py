"""Every user's list as a Spark job: users partitioned over executors, the catalog once.

The catalog side of the funnel's signals (models/funnel.py:item_signals: item vectors
and their FAISS indices, co-visitation neighbours, EASE and item-kNN where the catalog
is small enough, trending, per-country popularity, categories, age) is computed once on
the driver and written to the lake (:func:`save_catalog`); the ranker is already there.
The users are hashed into buckets sized from the data; per bucket, its pairs and its
users (country, onboarding preferences, ALS and two-tower vectors) are co-grouped and
handed to ``applyInPandas``, which loads the catalog, the ranker and the titles once per
Python worker (:func:`load_catalog`) and runs the in-process funnel's own functions
(models/funnel.py:with_users, rank_users; models/reasons.py:final_lists) on the bucket's
users. Each bucket writes its lists to the lake; publish reads them from there.

Nothing depends on which users share a bucket (models/generators.py), so with exact
indices the lists equal the in-process funnel's (tests/test_spark_funnel.py). Works on
``local[*]`` and on a standalone cluster whose executors see the lake's path.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.funnel import FunnelConfig, Signals

log = logging.getLogger("recs.spark_funnel")

# Pairs per bucket: a bucket's users, their pairs, candidates and features are in one
# Python worker's memory at once (about 1 KB per pair all told).
PAIRS_PER_BUCKET = 500_000
LIST_SCHEMA = ("user_id long, items array<long>, scores array<float>, reasons array<string>, "
               "reason_item_ids array<long>, sources array<string>, history_tail array<long>")
_ARRAYS = ("item_ids", "category", "popularity", "trending", "age_days", "item_hours",
           "als_items", "tt_items", "text", "country_popularity", "ease", "itemknn")


# --- The catalog in the lake --------------------------------------------------------------


def save_catalog(catalog: Signals, out_dir: Path) -> None:
    """Write ``catalog`` (models/funnel.py:item_signals) to ``out_dir``: its arrays (one
    ``.npy`` each), co-visitation as a sparse ``.npz``, the vector indices as FAISS
    files and ``catalog.json``. The folder appears atomically."""
    import faiss
    import scipy.sparse as sp

    from core import lake
    from models.generators import retrieval

    side = retrieval(catalog)  # the indices are built once, here
    with lake.atomic_dir(Path(out_dir)) as tmp:
        present = []
        for name in _ARRAYS:
            value = getattr(catalog, name)
            if value is not None:
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
                present.append(name)
        if catalog.covisit is not None:
            sp.save_npz(tmp / "covisit.npz", catalog.covisit.tocsr())
        for name, index in side.indices.items():
            if index is not None:
                faiss.write_index(index, str(tmp / f"index_{name}.faiss"))
        (tmp / "catalog.json").write_text(json.dumps({
            "arrays": present, "covisit": catalog.covisit is not None,
            "indices": sorted(n for n, i in side.indices.items() if i is not None),
            "category_names": list(catalog.category_names),
            "country_names": list(catalog.country_names),
            "new_days": catalog.new_days, "exact_max": catalog.exact_max}, indent=2))


_LOADED: dict[str, Signals] = {}


def load_catalog(path: str) -> Signals:
    """The catalog written by :func:`save_catalog`, read once per process (a Spark Python
    worker serves many buckets), with its retrieval structures and saved indices."""
    if path in _LOADED:
        return _LOADED[path]
    import faiss
    import scipy.sparse as sp

    from models import generators

    folder = Path(path)
    meta = json.loads((folder / "catalog.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False)
              for name in meta["arrays"]}
    catalog = Signals(
        user_ids=np.empty(0, "int64"), item_ids=arrays.pop("item_ids"), history=[],
        history_weight=[], category=arrays.pop("category"),
        category_names=tuple(meta["category_names"]), popularity=arrays.pop("popularity"),
        trending=arrays.pop("trending"), age_days=arrays.pop("age_days"),
        item_hours=arrays.pop("item_hours"), user_hours=np.zeros((0, 4), "float32"),
        country_names=tuple(meta["country_names"]), new_days=meta["new_days"],
        exact_max=meta["exact_max"], **arrays)
    if meta["covisit"]:
        catalog.covisit = sp.load_npz(folder / "covisit.npz").tocsr()
    side = generators.item_side(catalog, build_indices=False)
    for name in meta["indices"]:
        side.indices[name] = faiss.read_index(str(folder / f"index_{name}.faiss"))
    catalog.retrieval = side
    _LOADED.clear()  # one catalog per process: the day's
    _LOADED[path] = catalog
    return catalog


# --- The job ------------------------------------------------------------------------------


def buckets_for(n_pairs: int, parallelism: int) -> int:
    """Buckets of users: at least two per core, at most :data:`PAIRS_PER_BUCKET` pairs
    each on average."""
    return max(2 * parallelism, math.ceil(n_pairs / PAIRS_PER_BUCKET), 1)


def _vectors_frame(spark, path: str | None, name: str):
    """(user_id, <name>) from a factors folder's users.parquet (id, vector), or None."""
    if not path or not (Path(path) / "users.parquet").exists():
        return None
    from pyspark.sql import functions as F

    return spark.read.parquet(str(Path(path) / "users.parquet")).select(
        F.col("id").cast("long").alias("user_id"), F.col("vector").alias(name))


def run(spark, *, catalog_dir: str, pairs_path: str, users_path: str | None,
        als_dir: str | None, two_tower_dir: str | None, ranker_dir: str | None,
        items_path: str, model: str, config: FunnelConfig, rules, top_k: int,
        out_dir: str, buckets: int | None = None, only=None) -> dict:
    """Every user's list (the gate's ``model``: 'full_pipeline' or one generator) into
    ``out_dir`` (Parquet, one or more files per bucket, replaced atomically).

    ``only`` (``models.assignment.VariantUsers``): the lists of those users alone (an
    experiment variant's), its pairs and profiles filtered before the shuffle, so that the
    cost follows the variant's share of the users."""
    from pyspark.sql import functions as F

    from core import lake
    from models.generators import SOURCES

    if model != "full_pipeline" and model not in SOURCES:
        raise ValueError(f"model={model!r}: expected 'full_pipeline' or one of {SOURCES}")
    t0 = time.perf_counter()
    def read_pairs():  # a fresh read each time: Spark refuses to co-group a frame's lineage
        return spark.read.parquet(pairs_path).select(
            F.col("user_id").cast("long"), F.col("item_id").cast("long"),
            F.col("weight").cast("float"), "timestamp")

    pairs = read_pairs()
    n_pairs = pairs.count()
    n_buckets = buckets or buckets_for(n_pairs, spark.sparkContext.defaultParallelism)
    people = read_pairs().select("user_id").distinct()
    if users_path:
        def profile():  # a fresh read each time, as for the pairs
            return spark.read.parquet(users_path).select(
                F.col("user_id").cast("long"), "country", "preferences")

        # Users without pairs but with onboarding answers get lists too (cold start).
        people = people.unionByName(
            profile().where(F.col("preferences").isNotNull()).select("user_id")).distinct()
        people = people.join(profile(), "user_id", "left")
    else:
        people = people.withColumn("country", F.lit(None).cast("string")) \
            .withColumn("preferences", F.lit(None).cast("string"))
    for name, folder in (("als", als_dir), ("two_tower", two_tower_dir)):
        vectors = _vectors_frame(spark, folder, name)
        people = people.join(vectors, "user_id", "left") if vectors is not None else \
            people.withColumn(name, F.lit(None).cast("array<float>"))

    def bucket(frame):
        if only is not None:
            def chosen(batches):
                for b in batches:
                    yield b[only.mask(b["user_id"].tolist())]

            frame = frame.mapInPandas(chosen, frame.schema)
        return frame.withColumn("bucket", F.pmod(F.xxhash64("user_id"), F.lit(n_buckets)))

    settings = {"catalog": catalog_dir, "ranker": ranker_dir, "items": items_path,
                "model": model, "config": config, "rules": rules, "top_k": top_k}

    def lists_of_bucket(bucket_pairs: pd.DataFrame, bucket_people: pd.DataFrame):
        return bucket_lists(bucket_pairs, bucket_people, **settings)

    lists = (bucket(pairs).groupBy("bucket")
             .cogroup(bucket(people).groupBy("bucket"))
             .applyInPandas(lists_of_bucket, LIST_SCHEMA))
    final = Path(out_dir)
    with lake.atomic_dir(final) as tmp:
        lists.write.mode("overwrite").parquet(str(tmp / "lists"))
        written = spark.read.parquet(str(tmp / "lists")).count()
        for part in (tmp / "lists").iterdir():  # the files only: readers see one folder
            part.rename(tmp / part.name)
        (tmp / "lists").rmdir()
    seconds = time.perf_counter() - t0
    log.info("spark funnel: %d user lists from %d pairs in %d buckets, %.1fs (%.0f users/s)",
             written, n_pairs, n_buckets, seconds, written / max(seconds, 1e-9))
    return {"recommendations": str(final), "n_users": written, "n_pairs": n_pairs,
            "buckets": n_buckets, "seconds": round(seconds, 1),
            "users_per_s": round(written / max(seconds, 1e-9), 1)}


_TITLES: dict[str, pd.Series] = {}
_RANKERS: dict[str, object] = {}


def bucket_lists(bucket_pairs: pd.DataFrame, bucket_people: pd.DataFrame, *, catalog: str,
                 ranker: str | None, items: str, model: str, config: FunnelConfig, rules,
                 top_k: int) -> pd.DataFrame:
    """The lists of one bucket's users (what each executor runs; pure compute once the
    catalog, ranker and titles are loaded, which happens once per worker process)."""
    import faiss
    import torch

    from jobs.funnel import preferences_of
    from jobs.train_als import Factors
    from models.funnel import Artifacts, rank_users, with_users
    from models.ranker import load as load_ranker
    from models.reasons import final_lists

    # Executors run several Python workers side by side: one thread each.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    cat = load_catalog(catalog)
    if items not in _TITLES:
        _TITLES.clear()
        frame = pd.read_parquet(items, columns=["item_id", "title"])
        _TITLES[items] = frame.set_index("item_id")["title"]
    titles = _TITLES[items]
    scorer = None
    if model == "full_pipeline":
        if ranker not in _RANKERS:
            _RANKERS.clear()
            _RANKERS[ranker] = load_ranker(ranker)
        scorer = _RANKERS[ranker]
    pairs = bucket_pairs.drop(columns=["bucket"])
    pairs["timestamp"] = pd.to_datetime(pairs["timestamp"], utc=True)
    prefs = preferences_of(bucket_people)
    # The funnel's users (models/funnel.py:funnel_users): those with pairs, and those
    # with onboarding categories.
    users = np.unique(np.concatenate([pairs["user_id"].to_numpy("int64"),
                                      np.fromiter(prefs.keys(), "int64")]))
    people = bucket_people.drop_duplicates("user_id").set_index("user_id").reindex(users)

    def factors(column: str):
        has = people[column].notna().to_numpy() if len(people) else np.zeros(0, bool)
        if not has.any():
            return None
        vectors = np.stack(people[column].to_numpy()[has]).astype("float32")
        return Factors(users[has], vectors, np.empty(0, "int64"),
                       np.empty((0, vectors.shape[1]), "float32"))

    art = Artifacts(als=factors("als"), two_tower=factors("two_tower"))
    countries = people["country"]
    sig = with_users(cat, pairs, users, art=art, preferences=prefs,
                     countries=countries if countries.notna().any() else None)
    rows = np.arange(sig.n_users)
    if scorer is not None:
        ranked = rank_users(sig, rows, config, scorer)
    else:
        ranked = rank_users(sig, rows, config, None, by=model,
                            keep=max(config.sizes.get(model), top_k))
    out = final_lists(sig, ranked, titles, top_k, config=config.rerank, rules=rules)
    return out.astype({"user_id": "int64"})


def session(master: str | None, driver_memory: str = "2g"):
    """A Spark session for the funnel: the project's Python on every worker, Arrow for
    the pandas exchange, Python workers reused across tasks (the catalog stays loaded)."""
    import os
    import sys

    from jobs.train_als import spark_session

    # PySpark starts its Python workers with PYSPARK_PYTHON (default: python3 on PATH).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return spark_session(master, app="recs-funnel", driver_memory=driver_memory, conf={
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true"})
