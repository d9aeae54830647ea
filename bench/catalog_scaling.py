"""Per-user precompute cost against the catalog's size (issue 12: flat from 10K to 100K).

The same users (histories drawn from a Zipf catalog, seeded) through ``rank_users`` +
``final_lists`` (what the Spark funnel runs per bucket) over synthetic catalogs of
growing size: ALS (32-d), two-tower (64-d) and MiniLM-sized text (384-d) vectors,
co-visitation with 100 neighbours per item, 20 categories, trending, 5 countries, new
items. Item vectors are indexed as the funnel indexes them: exact (FAISS flat) up to
``--exact-max`` items, HNSW above. EASE and item-kNN are dense (items^2) and off above
``--ease-max`` (the shipped RECS_EASE_MAX_ITEMS, 20,000): their cost is reported at each
size (columns ``ease``), and the ratio that matters is taken with them off everywhere
(``--ease-max 0``, the default here) so the sizes compare like with like.

For each size: the catalog's one-off cost (signals' retrieval structures: indices,
sorted lists) and the per-user cost (median of ``--repeats`` runs, seconds per user),
and the ratio of each size's per-user cost to the smallest's, measured in the same run.
The ranker is a real ``models.ranker`` network trained for one epoch on random labels:
its quality is irrelevant here, its cost is not.

    .venv/bin/python -m bench.catalog_scaling [--items 10000,30000,100000] [--users 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd


def synthetic_signals(n_items: int, n_users: int, seed: int, *, exact_max: int,
                      ease_max: int):
    from models.funnel import FunnelConfig, item_signals, with_users
    from models.generators import retrieval

    rng = np.random.default_rng(seed)
    # Histories: 20-200 items per user from a Zipf-shaped popularity over the catalog.
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    weights /= weights.sum()
    rows = []
    as_of = pd.Timestamp("2026-11-01", tz="UTC")
    for u in range(n_users):
        k = int(rng.integers(20, 200))
        items = rng.choice(n_items, size=k, replace=False, p=weights)
        ts = as_of - pd.to_timedelta(rng.uniform(0, 60, size=k), unit="D")
        rows.append(pd.DataFrame({"user_id": u, "item_id": items, "weight": 1.0,
                                  "timestamp": ts}))
    pairs = pd.concat(rows, ignore_index=True)
    items = pd.DataFrame({"item_id": np.arange(n_items),
                          "title": [f"item {i}" for i in range(n_items)],
                          "category": [f"c{c}" for c in rng.integers(0, 20, n_items)],
                          "created_at": as_of - pd.to_timedelta(
                              rng.uniform(0, 400, n_items), unit="D")})
    from jobs.train_als import Factors
    from models.funnel import Artifacts

    def factors(d: int) -> Factors:
        return Factors(np.arange(n_users), rng.standard_normal((n_users, d)).astype("float32"),
                       np.arange(n_items), rng.standard_normal((n_items, d)).astype("float32"))

    nb = rng.integers(0, n_items, size=(n_items, 100))
    covisit = pd.DataFrame({"item_id": np.repeat(np.arange(n_items), 100),
                            "neighbour_id": nb.ravel(),
                            "score": rng.uniform(0.01, 1, n_items * 100).astype("float32")})
    covisit = covisit[covisit["item_id"] != covisit["neighbour_id"]] \
        .drop_duplicates(["item_id", "neighbour_id"])
    art = Artifacts(als=factors(32), two_tower=factors(64), covisit=covisit,
                    text_ids=np.arange(n_items),
                    text=rng.standard_normal((n_items, 384)).astype("float32"))
    countries = pd.Series(rng.choice(["DE", "FR", "US", "JP", "BR"], n_users),
                          index=np.arange(n_users))
    config = FunnelConfig(ease_max_items=ease_max, exact_max=exact_max)
    t0 = time.perf_counter()
    catalog = item_signals(pairs, items, art, as_of=as_of, config=config, countries=countries)
    retrieval(catalog)
    catalog_s = time.perf_counter() - t0
    sig = with_users(catalog, pairs, np.arange(n_users), art=art, countries=countries)
    return sig, config, items.set_index("item_id")["title"], catalog_s, catalog


def tiny_ranker(sig, config, seed: int):
    from models import ranker as rk
    from models.features import feature_names, features
    from models.generators import generate

    rows = np.arange(min(64, sig.n_users))
    cand = generate(sig, rows, config.sizes)
    x = features(sig, rows, cand)
    y = np.random.default_rng(seed).random(len(x)) < 0.02
    return rk.train(x, cand.user, y, feature_names(),
                    rk.RankerConfig(epochs=1, ensemble=1, seed=seed))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,30000,100000")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exact-max", type=int, default=50_000)
    p.add_argument("--ease-max", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    from models.funnel import rank_users
    from models.reasons import final_lists

    sizes = [int(x) for x in args.items.split(",")]
    result = {"args": vars(args), "sizes": {}}
    for n_items in sizes:
        sig, config, titles, catalog_s, _ = synthetic_signals(
            n_items, args.users, args.seed, exact_max=args.exact_max, ease_max=args.ease_max)
        ranker = tiny_ranker(sig, config, args.seed)
        users = np.arange(sig.n_users)
        times, timings = [], {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ranked = rank_users(sig, users, config, ranker, timings=timings)
            final_lists(sig, ranked, titles, 100, config=config.rerank)
            times.append(time.perf_counter() - t0)
        per_user_ms = statistics.median(times) / len(users) * 1000
        kinds = sig.retrieval.kinds
        result["sizes"][n_items] = {
            "catalog_s": round(catalog_s, 2), "per_user_ms": round(per_user_ms, 3),
            "indices": kinds, "ease": sig.ease is not None,
            "stages_ms_per_user": {k: round(v / args.repeats / len(users) * 1000, 3)
                                   for k, v in timings.items() if k != "n_candidates"},
            "candidates_per_user": round(timings["n_candidates"] / args.repeats
                                         / len(users), 1)}
        print(f"{n_items:>8} items: {per_user_ms:7.2f} ms/user "
              f"(catalog {catalog_s:.1f} s, indices {kinds})", flush=True)
    base = result["sizes"][sizes[0]]["per_user_ms"]
    for r in result["sizes"].values():
        r["per_user_over_smallest"] = round(r["per_user_ms"] / base, 2)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
