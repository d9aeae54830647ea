"""Two-tower model against ALS on the benchmark protocol, measured in one run.

On a MovieLens folder (default ml-latest-small): the pairs and the stratified 75/25 split
(seed 42) of ``recs evaluate``; the two-tower model (default ``TwoTowerConfig``) trained
on the training part and timed; ALS (default ``AlsParams``) trained on the same part in
a local Spark session; both scored on the same users (test users with training pairs),
top-10 excluding training items, every test rating relevant. Prints a markdown table.

    .venv/bin/python -m bench.two_tower [--data ../shared/data/ml-latest-small]
        [--seeds 42,7,3] [--text] [--no-als] [--max-steps 0,443,222]

``--max-steps`` trains each seed once per training budget (``TwoTowerConfig.max_steps``;
0: every epoch), to show what a budget that cuts the epochs short costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from jobs import evaluate as ev
from jobs import train_two_tower as job
from models.two_tower import TwoTowerConfig

COLUMNS = ("precision@10", "recall@10", "ndcg@10", "map", "coverage")


def als_protocol(data) -> dict:
    """ALS with the default parameters on the protocol split, in a local Spark session."""
    from jobs.train_als import AlsParams, spark_session, train

    pairs, train_pairs, test_pairs, _ = data
    spark = spark_session("local[*]", app="recs-bench-two-tower")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        started = time.perf_counter()
        factors = train(spark, train_pairs, AlsParams())
        seconds = time.perf_counter() - started
    finally:
        spark.stop()
    results = ev.compare(factors, train_pairs, test_pairs, int(pairs["item_id"].nunique()))
    return {"results": results, "train_seconds": round(seconds, 1)}


def _row(name: str, metrics: dict, seconds: float | str) -> str:
    return f"| {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS) + f" | {seconds} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--seeds", default="42", help="two-tower seeds, comma-separated")
    p.add_argument("--text", action="store_true", help="add item text embeddings")
    p.add_argument("--no-als", action="store_true", help="skip the ALS reference")
    p.add_argument("--max-steps", default=str(TwoTowerConfig.max_steps),
                   help="training budgets, comma-separated (0: no cap)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = Path(args.data)
    data = job.protocol_data(path)
    runs = []
    budgets = [int(b) for b in args.max_steps.split(",")]
    for max_steps in budgets:
        for seed in (int(s) for s in args.seeds.split(",")):
            config = TwoTowerConfig(seed=seed, max_steps=max_steps)
            runs.append(job.evaluate_protocol(path, config, text=args.text, data=data))
            r = runs[-1]
            steps = sum(e.get("steps", 0) for e in r["epochs"])
            r["steps"] = steps
            print(f"two-tower seed {seed}, max_steps {max_steps} ({steps} steps): NDCG@10 "
                  f"{r['results']['two_tower']['ndcg@10']:.4f}, precision@10 "
                  f"{r['results']['two_tower']['precision@10']:.4f}, "
                  f"trained in {r['train_seconds']}s", flush=True)
    als = None if args.no_als else als_protocol(data)
    first = runs[0]
    print(f"\n{path} - stratified 75/25 seed 42: {first['n_train']} train / "
          f"{first['n_test']} test pairs, {first['n_users_scored']} users scored"
          f"{', text embeddings' if args.text else ''}\n")
    print("| model | " + " | ".join(COLUMNS) + " | training seconds |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for r in runs:
        print(_row(f"two-tower (seed {r['config']['seed']}, {r['steps']} steps)",
                   r["results"]["two_tower"], r["train_seconds"]))
    for max_steps in budgets:
        group = [r for r in runs if r["config"]["max_steps"] == max_steps]
        if len(group) > 1:
            mean = {c: statistics.mean(r["results"]["two_tower"][c] for r in group)
                    for c in COLUMNS}
            sd = statistics.stdev(r["results"]["two_tower"]["ndcg@10"] for r in group)
            print(_row(f"two-tower, max_steps {max_steps}, mean of {len(group)} "
                       f"(NDCG sd {sd:.4f})", mean,
                       round(statistics.mean(r["train_seconds"] for r in group), 1)))
    if als is not None:
        print(_row("ALS (default AlsParams)", als["results"]["als"], als["train_seconds"]))
    print(_row("popularity", first["results"]["popularity"], "-"))
    if args.json:
        Path(args.json).write_text(json.dumps({"two_tower": runs, "als": als}, indent=1))


if __name__ == "__main__":
    main()
