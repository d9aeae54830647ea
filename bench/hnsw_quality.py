"""What HNSW retrieval costs in quality: candidate recall and the gate's NDCG (issue 12).

Above ``RECS_EXACT_INDEX_MAX_ITEMS`` (50,000) items the vector generators (ALS, two-tower,
text) search an HNSW graph instead of an exact FAISS index (models/generators.py). Per
dataset, the models are fitted once with the shipped settings (Spark ALS, two-tower,
MiniLM text, co-visitation: jobs/funnel.py:fit_artifacts), then the funnel's signals are
built twice from the same fit: exact indices (the shipped default at these sizes) and
HNSW everywhere (``exact_max=0``, what a catalog above the threshold gets, with the
shipped M, efConstruction and efSearch). Reported, per dataset:

* candidate recall of each vector generator: the share of the exact generator's pool
  (its shipped pool size, per user of the gate) that the HNSW generator also proposes;
* the gate's NDCG@10 (models/gate.py:gate_table, as the daily DAG and ``recs evaluate``
  compute it) of the full pipeline and of the published choice, exact and HNSW, and
  the difference.

Bars (issue 12): candidate recall >= 0.95 against exact; the gate's NDCG within 0.005.

    .venv/bin/python -m bench.hnsw_quality [--only ml-protocol,syn-longtail] [--out F]

Datasets are bench/robustness.py's (MovieLens protocol and time splits, the synthetic
generator's shapes); the default runs the MovieLens protocol split and two synthetic
shapes the defaults were not tuned on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

VECTOR_SOURCES = ("als", "two_tower", "text")
DEFAULT = "ml-protocol,syn-longtail,syn-popular"


def candidate_recall(exact, hnsw, rows: np.ndarray, sizes) -> dict[str, float]:
    """Per vector generator: |HNSW pool & exact pool| / |exact pool| over ``rows``."""
    from models.generators import GENERATORS, Batch

    out = {}
    for source in VECTOR_SOURCES:
        if not GENERATORS[source].available(exact):
            continue
        n = sizes.get(source)
        hit = total = 0
        for start in range(0, len(rows), 512):
            batch = rows[start:start + 512]
            a = GENERATORS[source].retrieve(Batch(exact, batch), n)
            b = GENERATORS[source].retrieve(Batch(hnsw, batch), n)
            for (ra, _), (rb, _) in zip(a, b, strict=True):
                hit += len(np.intersect1d(ra, rb))
                total += len(ra)
        out[source] = round(hit / max(total, 1), 4)
    return out


def one(name: str, load, split: str, s, spark, seed: int) -> dict:
    from jobs.configs import funnel_config
    from jobs.funnel import fit_artifacts
    from jobs.prepare import split_pairs
    from jobs.train_two_tower import text_matrix
    from models.funnel import build_signals
    from models.gate import gate_table

    t0 = time.perf_counter()
    pairs, items = load()
    train, test = split_pairs(pairs, split, s.holdout_fraction, seed)
    vectors = (items["item_id"].to_numpy(), text_matrix(items)) if s.two_tower_text else None
    art = fit_artifacts(train, items, spark=spark, settings=s, text=vectors)
    cfg = funnel_config(s)
    row = {"dataset": name, "n_pairs": len(pairs), "n_items": int(items["item_id"].nunique())}
    sigs, gate = {}, {}
    for kind, exact_max in (("exact", max(cfg.exact_max, len(items) + 1)), ("hnsw", 0)):
        c = replace(cfg, exact_max=exact_max)
        sig = build_signals(train, items, art, as_of=train["timestamp"].max(), config=c)
        t = time.perf_counter()
        metrics, _, _ = gate_table(sig, c, train, test,
                                   n_catalog=int(pairs["item_id"].nunique()),
                                   titles=items.set_index("item_id")["title"],
                                   folds=s.ranker_folds, max_users=s.gate_max_users)
        gate[kind] = {"full_pipeline": metrics["full_pipeline"]["ndcg@10"],
                      "published": metrics["published_model"]["name"],
                      "published_ndcg@10": metrics["published_model"]["ndcg@10"],
                      "gate_seconds": round(time.perf_counter() - t, 1),
                      "indices": sig.retrieval.kinds}
        sigs[kind] = sig
    test_users = np.intersect1d(test["user_id"].unique(), train["user_id"].unique())
    import pandas as pd

    rows = pd.Index(sigs["exact"].user_ids).get_indexer(test_users)
    rows = np.sort(rows[rows >= 0])
    row["candidate_recall"] = candidate_recall(sigs["exact"], sigs["hnsw"], rows, cfg.sizes)
    row["gate"] = gate
    row["ndcg_diff_full_pipeline"] = round(
        gate["hnsw"]["full_pipeline"] - gate["exact"]["full_pipeline"], 4)
    row["ndcg_diff_published"] = round(
        gate["hnsw"]["published_ndcg@10"] - gate["exact"]["published_ndcg@10"], 4)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--only", default=DEFAULT, help="comma-separated dataset names "
                   "(bench/robustness.py's)")
    p.add_argument("--data-seed", type=int, default=42)
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("RECS_HOME", tempfile.mkdtemp(prefix="recs-bench-hnsw-"))
    from bench.robustness import datasets
    from core import settings as settings_mod
    from jobs.train_als import spark_session

    s = settings_mod.get()
    todo = datasets(Path(args.data), args.data_seed)
    want = args.only.split(",")
    missing = [w for w in want if w not in todo]
    if missing:
        print(f"skipped (unknown, or {args.data} absent): {', '.join(missing)}")
    spark = spark_session(s.spark_master, app="recs-hnsw-quality",
                          driver_memory=s.spark_driver_memory)
    out = []
    try:
        for name in [w for w in want if w in todo]:
            load, split = todo[name]
            r = one(name, load, split, s, spark, args.data_seed)
            out.append(r)
            print(f"{name}: {r['n_items']} items, candidate recall {r['candidate_recall']}, "
                  f"gate NDCG@10 full pipeline exact {r['gate']['exact']['full_pipeline']:.4f}"
                  f" hnsw {r['gate']['hnsw']['full_pipeline']:.4f} "
                  f"(diff {r['ndcg_diff_full_pipeline']:+.4f}), published "
                  f"{r['gate']['exact']['published']} / {r['gate']['hnsw']['published']} "
                  f"diff {r['ndcg_diff_published']:+.4f} ({r['seconds']:.0f} s)", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(out, indent=1))
    finally:
        spark.stop()
    worst = min(v for r in out for v in r["candidate_recall"].values()) if out else None
    diff = max(abs(r["ndcg_diff_published"]) for r in out) if out else None
    print(json.dumps({"min_candidate_recall": worst, "max_abs_ndcg_diff_published": diff,
                      "bars": {"candidate_recall": 0.95, "ndcg_diff": 0.005}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
