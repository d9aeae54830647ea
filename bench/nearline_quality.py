"""Nearline quality: a nearline-refreshed list against a daily re-run on the same data.

In a fresh home with its own Postgres: synthetic data, the daily pipeline once (in
process) for a live version; then ``--users`` users each consume new items (the first
and third of their list and one popular item they have not seen), inserted the way the
reader inserts them; one nearline pass refreshes their lists (jobs/nearline.py: the
version's funnel with folded-in ALS vectors); then the daily pipeline runs again for the
day of those events, on all the data (the reference: what those users get tomorrow).

For the changed users, NDCG@10 and overlap@10 against the re-run's top 10 (its items as
the relevant set) of: the list before nearline (stale), the nearline list (shipped: the
funnel), and the ALS-only refresh (the previous nearline, computed here for comparison);
and the nearline pass's time per refreshed user.

    .venv/bin/python -m bench.nearline_quality [--users 100] [--n-users 1000 --items 500
                                                --events 50000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ScratchHome
from bench.freshness import _lists, _post, _sql

BIN = Path(sys.executable).parent
K = 10


def ndcg_against(got: list[int], want: list[int], k: int = K) -> float:
    """NDCG@k of ``got`` with the items of ``want[:k]`` as the relevant set."""
    rel = set(want[:k])
    gains = [1.0 / np.log2(r + 2) for r, i in enumerate(got[:k]) if i in rel]
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(k, len(rel))))
    return float(sum(gains) / ideal) if ideal else 0.0


def als_only(dsn: str, users: list[int]) -> dict[int, list[int]]:
    """The previous nearline refresh (ALS fold-in, exact top-k) for ``users``."""
    from core import db
    from jobs import nearline
    from jobs.build_index import load_index
    from jobs.precompute import personalized_lists
    from jobs.train_als import Factors, load_factors
    from models.confidence import aggregate_pairs

    conn = db.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            live = nearline.live_version(cur)
            events = nearline.user_events(cur, np.array(users), dt.datetime.now(dt.UTC), None)
    finally:
        conn.close()
    pairs = aggregate_pairs(events)
    factors = load_factors(live.factors_dir)
    ids, vectors = nearline.fold_in(pairs, factors.item_ids, factors.item_factors,
                                    float(live.param("als_reg", 0.3)),
                                    float(live.param("als_alpha", 5.0)))
    index = load_index(live.index_dir / "items_ip.faiss")
    import pandas as pd

    lists = personalized_lists(Factors(ids, vectors, factors.item_ids, factors.item_factors),
                               index, pairs, pd.Series(dtype="object"), K)
    return {int(u): [int(i) for i in items] for u, items in zip(lists["user_id"],
                                                                 lists["items"], strict=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100, help="users with new events")
    p.add_argument("--n-users", type=int, default=1000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--keep", action="store_true", help="keep the scratch home")
    args = p.parse_args()
    with ScratchHome("recs-bench-nearline-quality-", keep=args.keep) as scratch:
        dsn = scratch.dsn
        scratch.recs("db-up")
        scratch.recs("load", "synthetic", "--users", str(args.n_users), "--items",
                     str(args.items), "--events", str(args.events))
        scratch.recs("pipeline", "--inline")
        scratch.use()
        from jobs import nearline

        nearline.run(dsn=dsn)  # the first pass sets the watermark
        users = [r[0] for r in _sql(dsn, "SELECT r.user_id FROM serving_state s JOIN "
                                         "recommendations r ON r.model_version = "
                                         "s.live_version ORDER BY r.user_id")]
        users = [int(u) for u in np.random.default_rng(7).choice(users, args.users,
                                                                  replace=False)]
        stale = _lists(dsn, users)
        popular = [r[0] for r in _sql(dsn, "SELECT item_id FROM live_trending "
                                           "WHERE list_name = 'popular' ORDER BY rank")]
        events = []
        for u in users:
            seen = set(stale[u])
            pick = [stale[u][0], stale[u][2]] + [next(i for i in popular if i not in seen)]
            events += [(u, int(i), "purchase") for i in pick]
        _post(dsn, events)
        t0 = time.perf_counter()
        summary = nearline.run(dsn=dsn)
        nearline_s = time.perf_counter() - t0
        refreshed = _lists(dsn, users)
        baseline = als_only(dsn, users)
        scratch.recs("pipeline", "--inline", "--date",
                     dt.datetime.now(dt.UTC).date().isoformat())
        rerun = _lists(dsn, users)
        consumed = {u: {i for uu, i, _ in events if uu == u} for u in users}

        def fresh(lst: list[int], u: int) -> list[int]:
            return [i for i in lst if i not in consumed[u]]  # the reader excludes these

        rows = {}
        for name, lists in (("stale daily list", stale), ("nearline (funnel)", refreshed),
                            ("ALS-only refresh", baseline)):
            nd = [ndcg_against(fresh(lists.get(u, []), u), rerun[u]) for u in users]
            ov = [len(set(fresh(lists.get(u, []), u)[:K]) & set(rerun[u][:K])) / K
                  for u in users]
            rows[name] = {"ndcg@10": round(float(np.mean(nd)), 4),
                          "overlap@10": round(float(np.mean(ov)), 4)}
        report = {"data": {"users": args.n_users, "items": args.items,
                           "events": args.events, "changed_users": args.users},
                  "nearline": {k: summary.get(k) for k in
                               ("users_updated", "path", "seconds", "seconds_per_user",
                                "signals_seconds", "lists_seconds")},
                  "nearline_wall_seconds": round(nearline_s, 2),
                  "against_daily_rerun": rows}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
