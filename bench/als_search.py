"""Small grid search of ALS parameters, the source of the defaults in core/settings.py.

Runs the benchmark protocol (stratified 75/25 split, seed 42, top-10 excluding training
items) on ml-latest-small and on the project's synthetic data (the demo's default size),
for each (rank, reg, alpha), and prints a markdown table of NDCG@10 and precision@10,
with popularity on the same split as the reference.

    .venv/bin/python -m bench.als_search [--data ../shared/data/ml-latest-small]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd

from jobs import evaluate as ev
from jobs.prepare import split_pairs
from jobs.protocol import read_events
from jobs.train_als import AlsParams, spark_session, train
from models.confidence import aggregate_pairs

GRID = {"rank": (16, 32), "reg": (0.05, 0.1, 0.3), "alpha": (1.0, 2.0, 5.0)}


def synthetic_events() -> pd.DataFrame:
    from jobs.ingest.synthetic import SyntheticConfig, iter_events

    events = pd.concat(list(iter_events(SyntheticConfig())), ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    return events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--iters", type=int, default=15)
    args = p.parse_args()
    datasets = {"synthetic": synthetic_events()}
    if Path(args.data, "ratings.csv").exists():
        datasets = {"ml-latest-small": read_events(Path(args.data)), **datasets}
    spark = spark_session("local[*]", app="recs-als-search")
    spark.sparkContext.setLogLevel("ERROR")
    rows = []
    for name, events in datasets.items():
        pairs = aggregate_pairs(events)
        train_pairs, test_pairs = split_pairs(pairs, "stratified", 0.25, 42)
        n_catalog = int(pairs["item_id"].nunique())
        pop = None
        for rank, reg, alpha in itertools.product(*GRID.values()):
            t0 = time.perf_counter()
            f = train(spark, train_pairs, AlsParams(rank, reg, alpha, args.iters, 42))
            res = ev.compare(f, train_pairs, test_pairs, n_catalog)
            pop = res["popularity"]
            rows.append((name, rank, reg, alpha, res["als"]["ndcg@10"],
                         res["als"]["precision@10"], time.perf_counter() - t0))
            print(rows[-1], flush=True)
        rows.append((name, "popularity", "", "", pop["ndcg@10"], pop["precision@10"], 0.0))
    spark.stop()
    print("\n| data | rank | reg | alpha | NDCG@10 | precision@10 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.1f} |")


if __name__ == "__main__":
    main()
