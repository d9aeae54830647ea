"""The Spark funnel's throughput per core against the in-process funnel, same run.

A fresh home with its own Postgres (bench/common.py:ScratchHome): synthetic data of the
given size loaded and the daily pipeline run once (``recs pipeline --inline``: the
shipped steps, its precompute already the Spark job). Then, on that version's inputs
(the live version's artefacts in ``model_runs``), timed:

* **in-process**: ``with_users`` + ``rank_users`` + ``final_lists`` over every user on
  one core (one BLAS and torch thread, as rank_users runs them), the catalog loaded from
  the lake as the executors load it;
* **spark local[1]** and **local[2]**: ``jobs.spark_funnel.run`` end to end (reading the
  lake, buckets, applyInPandas, writing the lists), a fresh session each.

* with ``--cluster``: **standalone clusters** of one and of two one-core workers
  (tests/spark_cluster.py: a master and workers from the pyspark package, each worker
  with its own temporary folders), the same job on each, a fresh cluster and session
  each (``--cluster-only`` skips the in-process and local runs).

Prints users/s and users/s per core of each, the in-process / Spark per-core ratio (the
cost of distribution; the issue's bar is <= 1.5), the local[2] / local[1] speed-up and,
with ``--cluster``, the two-worker / one-worker speed-up (the issue's bar: >= 1.7).

    .venv/bin/python -m bench.spark_funnel [--users 20000] [--items 5000] [--events 1000000]
                                           [--cluster [--cluster-only]]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ScratchHome


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--cluster", action="store_true",
                   help="also time the job on standalone clusters of one and two workers")
    p.add_argument("--cluster-only", action="store_true",
                   help="with --cluster: skip the in-process and local runs")
    p.add_argument("--keep", action="store_true", help="keep the scratch home")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    result: dict = {"args": vars(args)}
    with ScratchHome("recs-bench-spark-funnel-", keep=args.keep) as scratch:
        scratch.recs("db-up")
        t0 = time.perf_counter()
        scratch.recs("load", "synthetic", "--users", str(args.users), "--items",
                     str(args.items), "--events", str(args.events))
        result["load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        scratch.recs("pipeline", "--inline")
        result["pipeline_s"] = round(time.perf_counter() - t0, 1)
        scratch.use()
        result.update(measure(scratch.dsn, local=not (args.cluster and args.cluster_only),
                              cluster=scratch.home / "bench-cluster" if args.cluster
                              else None))
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def measure(dsn: str, local: bool = True, cluster: Path | None = None) -> dict:
    import psycopg2
    import torch

    from core import settings as settings_mod
    from jobs import daily, spark_funnel
    from jobs.configs import funnel_config
    from jobs.precompute import load_rules
    from models.funnel import rank_users, with_users
    from models.ranker import load as load_ranker
    from models.reasons import final_lists

    settings_mod._cached = None
    s = settings_mod.get()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.artifacts, r.metrics->'published_model'->>'name', "
                    "r.logical_date FROM serving_state s JOIN model_runs r "
                    "ON r.model_version = s.live_version")
        arts, model, day = cur.fetchone()
    if model != "full_pipeline":
        raise SystemExit(f"the gate chose {model}; this benchmark times the full pipeline")
    cfg = funnel_config(s)
    lake = Path(arts["als"]).parents[1]
    catalog_dir = str(lake / "funnel_catalog" / f"dt={day.isoformat()}")
    items = pd.read_parquet(arts["items"])
    rules = load_rules(items)
    out: dict = {}

    def spark_run(master: str, label: str) -> dict:
        spark = spark_funnel.session(master)
        try:
            t0 = time.perf_counter()
            job = spark_funnel.run(
                spark, catalog_dir=catalog_dir, pairs_path=arts["pairs"],
                users_path=arts.get("users"), als_dir=str(Path(arts["als"]) / "full"),
                two_tower_dir=str(Path(arts["two_tower"]) / "full"),
                ranker_dir=arts["ranker"], items_path=arts["items"], model=model,
                config=cfg, rules=rules, top_k=s.top_k,
                out_dir=str(lake / "bench-spark-funnel" / label))
            seconds = time.perf_counter() - t0
        finally:
            spark.stop()
        return {"users": job["n_users"], "buckets": job["buckets"],
                "seconds": round(seconds, 1), "users_per_s": round(job["n_users"] / seconds, 1)}

    if cluster is not None:
        from tests.spark_cluster import standalone

        for workers in (1, 2):
            with standalone(cluster / f"workers{workers}", workers=workers) as c:
                r = spark_run(c.url, f"cluster{workers}")
            r["users_per_s_per_core"] = round(r["users_per_s"] / workers, 1)
            out[f"cluster_{workers}_workers"] = r
            print(f"standalone, {workers} one-core worker(s):", r, flush=True)
        out["cluster2_over_cluster1"] = round(out["cluster_2_workers"]["users_per_s"]
                                              / out["cluster_1_workers"]["users_per_s"], 2)
    if not local:
        return out

    # In-process, one core.
    torch.set_num_threads(1)
    catalog = spark_funnel.load_catalog(catalog_dir)
    pairs = pd.read_parquet(arts["pairs"])
    art = daily.fit_artifacts("full", arts["als"], arts["two_tower"], arts["covisit"],
                              arts["text"])
    prefs, countries = daily.user_context(arts.get("users"))
    users = np.unique(np.concatenate([pairs["user_id"].to_numpy("int64"),
                                      np.fromiter(prefs.keys(), "int64")]))
    ranker = load_ranker(arts["ranker"])
    t0 = time.perf_counter()
    sig = with_users(catalog, pairs, users, art=art, preferences=prefs, countries=countries)
    ranked = rank_users(sig, np.arange(sig.n_users), cfg, ranker)
    final_lists(sig, ranked, items.set_index("item_id")["title"], s.top_k,
                config=cfg.rerank, rules=rules)
    seconds = time.perf_counter() - t0
    out["in_process"] = {"users": int(sig.n_users), "seconds": round(seconds, 1),
                         "users_per_s_per_core": round(sig.n_users / seconds, 1)}
    print("in-process:", out["in_process"], flush=True)

    for cores in (1, 2):
        r = spark_run(f"local[{cores}]", f"local{cores}")
        r["users_per_s_per_core"] = round(r["users_per_s"] / cores, 1)
        out[f"spark_local_{cores}"] = r
        print(f"spark local[{cores}]:", out[f"spark_local_{cores}"], flush=True)
    out["in_process_over_spark_per_core"] = round(
        out["in_process"]["users_per_s_per_core"]
        / out["spark_local_1"]["users_per_s_per_core"], 2)
    out["local2_over_local1"] = round(out["spark_local_2"]["users_per_s"]
                                      / out["spark_local_1"]["users_per_s"], 2)
    return out


if __name__ == "__main__":
    main()
