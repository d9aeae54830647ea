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

Vectors have the low intrinsic dimension of learned embeddings: a ``--latent``-dimensional
Gaussian (24) mapped to the model's dimensions by a fixed random matrix, plus isotropic
noise (0.3); users and items of one model share the matrix. Independent Gaussian vectors
in 384 dimensions are what no ANN index can search (HNSW at efSearch 256 on 100,000 of
them: recall@100 0.44) and not what models produce; ``--latent 0`` gives them anyway.
Each size reports every index's recall@100 against exact search (user vectors as queries
for ALS and two-tower, item vectors for text), so that a time is never one of an index
that does not find the items.

    .venv/bin/python -m bench.catalog_scaling [--items 10000,30000,100000] [--users 500]
                                              [--latent 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from bench.common import emit

NOISE = 0.3


def embeddings(rng: np.random.Generator, n: int, projection: np.ndarray | None, d: int
               ) -> np.ndarray:
    """``n`` vectors of ``d`` dimensions: latent Gaussians through ``projection`` plus
    noise, or independent Gaussians when ``projection`` is None."""
    if projection is None:
        return rng.standard_normal((n, d)).astype("float32")
    z = rng.standard_normal((n, projection.shape[0])).astype("float32")
    return (z @ projection + NOISE * rng.standard_normal((n, d))).astype("float32")


def synthetic_signals(n_items: int, n_users: int, seed: int, *, exact_max: int,
                      ease_max: int, latent: int = 24):
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

    def projection(d: int) -> np.ndarray | None:
        return (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype("float32") \
            if latent else None

    def factors(d: int) -> Factors:
        a = projection(d)
        return Factors(np.arange(n_users), embeddings(rng, n_users, a, d),
                       np.arange(n_items), embeddings(rng, n_items, a, d))

    nb = rng.integers(0, n_items, size=(n_items, 100))
    covisit = pd.DataFrame({"item_id": np.repeat(np.arange(n_items), 100),
                            "neighbour_id": nb.ravel(),
                            "score": rng.uniform(0.01, 1, n_items * 100).astype("float32")})
    covisit = covisit[covisit["item_id"] != covisit["neighbour_id"]] \
        .drop_duplicates(["item_id", "neighbour_id"])
    art = Artifacts(als=factors(32), two_tower=factors(64), covisit=covisit,
                    text_ids=np.arange(n_items),
                    text=embeddings(rng, n_items, projection(384), 384))
    countries = pd.Series(rng.choice(["DE", "FR", "US", "JP", "BR"], n_users),
                          index=np.arange(n_users))
    config = FunnelConfig(ease_max_items=ease_max, exact_max=exact_max)
    t0 = time.perf_counter()
    catalog = item_signals(pairs, items, art, as_of=as_of, config=config, countries=countries)
    retrieval(catalog)
    catalog_s = time.perf_counter() - t0
    sig = with_users(catalog, pairs, np.arange(n_users), art=art, countries=countries)
    return sig, config, items.set_index("item_id")["title"], catalog_s, catalog


def index_recall(sig, seed: int, k: int = 100) -> dict[str, float]:
    """Recall@k of each of the funnel's indices against exact search."""
    from models import index as ann

    out = {}
    for name, items, queries in (("als", sig.als_items, sig.als_users),
                                 ("two_tower", sig.tt_items, sig.tt_users),
                                 ("text", sig.text, sig.text)):
        index = sig.retrieval.indices.get(name)
        if index is not None:
            q = queries[ann.sample_queries(len(queries), n=200, seed=seed)]
            out[name] = round(ann.recall_vs_exact(index, items, q, k=k), 4)
    return out


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
    p.add_argument("--latent", type=int, default=24,
                   help="intrinsic dimension of the vectors (0: independent Gaussians)")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    from models.funnel import rank_users
    from models.reasons import final_lists

    sizes = [int(x) for x in args.items.split(",")]
    result = {"args": vars(args), "sizes": {}}
    for n_items in sizes:
        sig, config, titles, catalog_s, _ = synthetic_signals(
            n_items, args.users, args.seed, exact_max=args.exact_max, ease_max=args.ease_max,
            latent=args.latent)
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
            "indices": kinds, "recall_at_100": index_recall(sig, args.seed),
            "ease": sig.ease is not None,
            "stages_ms_per_user": {k: round(v / args.repeats / len(users) * 1000, 3)
                                   for k, v in timings.items() if k != "n_candidates"},
            "candidates_per_user": round(timings["n_candidates"] / args.repeats
                                         / len(users), 1)}
        print(f"{n_items:>8} items: {per_user_ms:7.2f} ms/user "
              f"(catalog {catalog_s:.1f} s, indices {kinds}, recall@100 "
              f"{result['sizes'][n_items]['recall_at_100']})", flush=True)
    base = result["sizes"][sizes[0]]["per_user_ms"]
    for r in result["sizes"].values():
        r["per_user_over_smallest"] = round(r["per_user_ms"] / base, 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
