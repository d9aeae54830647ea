"""Robustness: the daily gate's table on datasets of different shapes, shipped defaults.

    .venv/bin/python -m bench.robustness [--data ../shared/data/ml-latest-small]
                                         [--only NAME,...] [--out var/reports/robustness]
                                         [--data-seed 42]

Every dataset is scored by ``jobs.protocol.run_pairs``, which calls what the daily DAG's
``evaluate`` task calls (``models.gate.gate_table``) with the settings of this process
(``RECS_*``; the defaults unless you set some, and any change is printed): every model
fitted on the training part, the ranker cross-fitted on the held-out users, each
generator alone, the ranker, the full pipeline, popularity and the gate's published
choice scored on the same users.

Datasets (``--only`` picks some by name):

* ``ml-protocol``: ml-latest-small, the benchmark protocol (stratified by item, 75/25);
* ``ml-time``: ml-latest-small, a global time split (the newest 25% of pairs held out);
* ``ml-early-users``: ml-latest-small restricted to the half of its users who came
  first (by first event), protocol split;
* ``ml-third-items``: ml-latest-small restricted to a seeded third of its items;
* ``syn-default`` (the data ``make demo`` loads), ``syn-popular``, ``syn-longtail``,
  ``syn-sequential``, ``syn-coldstart``, ``syn-drift``: the project's generator in those
  shapes (jobs/ingest/synthetic.py SHAPES), protocol split.

``--data-seed`` (default 42) seeds the data, not the models: the synthetic generator,
the random third of items and the stratified split. Another seed gives other data of the
same shapes, for checking figures on data they were not looked at on.

Printed: one Markdown table of NDCG@10 per dataset (each generator, ranker, full
pipeline, popularity, the published choice and its lead over the best single generator)
and the same as JSON under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ML = Path("../shared/data/ml-latest-small")
GENERATORS = ("als", "two_tower", "ease", "itemknn", "covisit", "covisit_history", "text",
              "trending", "country", "new")
SYNTHETIC = ("default", "popular", "longtail", "sequential", "coldstart", "drift")


def movielens(path: Path):
    """(pairs, items) of a MovieLens folder, as ``recs evaluate`` builds them."""
    from jobs.train_two_tower import catalog, protocol_data

    pairs, _, _, items = protocol_data(path)
    return pairs, catalog(items, pairs)


def synthetic(shape: str, seed: int = 42):
    """(pairs, items) of the generator in ``shape``, pairs as the DAG's prepare makes."""
    from jobs.ingest.synthetic import generate_items, iter_events, shape_config
    from jobs.train_two_tower import catalog
    from models.confidence import aggregate_pairs

    cfg = shape_config(shape, seed=seed)
    items = generate_items(cfg)
    events = pd.concat(list(iter_events(cfg, items=items)), ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    pairs = aggregate_pairs(events)
    items = items.assign(created_at=pd.to_datetime(items["created_ts"], unit="s", utc=True))
    items = items[["item_id", "title", "category", "tags", "created_at"]]
    return pairs, catalog(items, pairs)


def datasets(ml: Path, seed: int) -> dict:
    """name -> (loader of (pairs, items), split)."""
    out = {}
    if ml.exists():
        def full():
            return movielens(ml)

        def early_users():
            pairs, items = movielens(ml)
            first = pairs.groupby("user_id")["timestamp"].min().sort_values(kind="stable")
            keep = first.index[: len(first) // 2]
            return pairs[pairs["user_id"].isin(keep)].reset_index(drop=True), items

        def third_items():
            pairs, items = movielens(ml)
            ids = np.sort(pairs["item_id"].unique())
            keep = np.random.default_rng(seed).choice(ids, len(ids) // 3, replace=False)
            return pairs[pairs["item_id"].isin(keep)].reset_index(drop=True), items

        out["ml-protocol"] = (full, "stratified")
        out["ml-time"] = (full, "time")
        out["ml-early-users"] = (early_users, "stratified")
        out["ml-third-items"] = (third_items, "stratified")
    for shape in SYNTHETIC:
        out[f"syn-{shape}"] = ((lambda s=shape: synthetic(s, seed)), "stratified")
    return out


def row(name: str, table: dict) -> dict:
    """One line of the robustness table from a protocol table."""
    res = table["results"]
    ndcg = {g: res[g]["ndcg@10"] for g in GENERATORS if g in res}
    best_gen = max(ndcg, key=ndcg.get)
    pick = res["published_model"]
    return {"dataset": name, "split": table["split"], "n_pairs": table["n_pairs"],
            "generators": ndcg, "best_generator": best_gen,
            "ranker": res["ranker"]["ndcg@10"], "full_pipeline": res["full_pipeline"]["ndcg@10"],
            "popularity": res["popularity"]["ndcg@10"], "published": pick["name"],
            "published_ndcg@10": pick["ndcg@10"],
            "published_precision@10": pick["precision@10"],
            "lead_published": pick["ndcg@10"] / ndcg[best_gen] - 1.0,
            "lead_full_pipeline": res["full_pipeline"]["ndcg@10"] / ndcg[best_gen] - 1.0,
            "seconds": table["seconds"]}


def markdown(rows: list[dict]) -> str:
    short = {"two_tower": "2tower", "covisit_history": "covis_h", "itemknn": "knn"}
    head = ["dataset", *[short.get(g, g) for g in GENERATORS], "ranker", "full", "popular",
            "published", "lead"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gens = [f"{r['generators'][g]:.4f}" if g in r["generators"] else "-"
                for g in GENERATORS]
        lines.append("| " + " | ".join([
            r["dataset"], *gens, f"{r['ranker']:.4f}", f"{r['full_pipeline']:.4f}",
            f"{r['popularity']:.4f}",
            f"{r['published']} {r['published_ndcg@10']:.4f}",
            f"{100 * r['lead_published']:+.1f}%"]) + " |")
    mean_full = np.mean([r["lead_full_pipeline"] for r in rows])
    mean_pub = np.mean([r["lead_published"] for r in rows])
    worst = min(r["published_ndcg@10"] - r["generators"][r["best_generator"]] for r in rows)
    lines.append("")
    lines.append(f"mean lead over the best single generator: published {100 * mean_pub:+.1f}%,"
                 f" full pipeline {100 * mean_full:+.1f}%; worst published - best generator: "
                 f"{worst:+.4f}; published >= popularity everywhere: "
                 f"{all(r['published_ndcg@10'] >= r['popularity'] for r in rows)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ML), help="ml-latest-small folder")
    p.add_argument("--only", help="comma-separated dataset names")
    p.add_argument("--out", default=None, help="folder for robustness.json/.md")
    p.add_argument("--data-seed", type=int, default=42,
                   help="seed of the synthetic data, the item third and the split")
    args = p.parse_args(argv)
    os.environ.setdefault("RECS_HOME", tempfile.mkdtemp(prefix="recs-bench-robust-"))
    from core import settings as settings_mod
    from jobs import protocol
    from jobs.train_als import spark_session
    from jobs.train_two_tower import text_matrix

    s = settings_mod.get()
    changed = protocol.changed_settings(s)
    print("settings:", "the shipped defaults" if not changed else f"changed {changed}",
          flush=True)
    todo = datasets(Path(args.data), args.data_seed)
    if not Path(args.data).exists():
        print(f"note: {args.data} is absent; the MovieLens datasets are skipped", flush=True)
    if args.only:
        want = args.only.split(",")
        unknown = [w for w in want if w not in todo]
        if unknown:
            p.error(f"unknown dataset(s) {unknown}; known: {', '.join(todo)}")
        todo = {k: v for k, v in todo.items() if k in want}
    out = Path(args.out or Path(s.home) / "reports" / "robustness")
    out.mkdir(parents=True, exist_ok=True)
    spark = spark_session(s.spark_master, app="recs-robustness",
                          driver_memory=s.spark_driver_memory)
    rows = []
    try:
        for name, (load, split) in todo.items():
            t0 = time.perf_counter()
            pairs, items = load()
            from jobs.prepare import split_pairs

            train, test = split_pairs(pairs, split, s.holdout_fraction, args.data_seed)
            table = protocol.run_pairs(pairs, train, test, items, settings=s, dataset=name,
                                       split=split, spark=spark, t0=t0,
                                       text=text_matrix if s.two_tower_text else None)
            rows.append(row(name, table))
            r = rows[-1]
            print(f"{name}: {len(pairs)} pairs, published {r['published']} "
                  f"{r['published_ndcg@10']:.4f}, best generator {r['best_generator']} "
                  f"{r['generators'][r['best_generator']]:.4f}, full pipeline "
                  f"{r['full_pipeline']:.4f}, popularity {r['popularity']:.4f} "
                  f"({table['seconds']:.0f}s)", flush=True)
            (out / "robustness.json").write_text(json.dumps(rows, indent=1))
    finally:
        spark.stop()
    text = markdown(rows)
    (out / "robustness.md").write_text(text + "\n")
    print(text)
    print("written:", out / "robustness.md", out / "robustness.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
