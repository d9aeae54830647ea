"""Two-tower training step cost against the catalog's size (issue 12: flat).

The same number of training pairs (``--pairs``, default 200,000: 195 steps of the default
batch of 1,024) over catalogs of growing size, every catalog item in at least one pair
(so the id embedding tables have one row per catalog item), the rest drawn Zipf-shaped;
one epoch of the shipped ``TwoTowerConfig`` (sparse embedding gradients, lazy Adam on the
id tables: models/two_tower.py:_optimizers). Prints seconds per step for each size and
its ratio to the smallest size's, measured in the same run. The cost of a step is taken
as CPU time, not wall time (the machine is shared): each size is fitted for one epoch and
for two, and the difference of the two fits' process CPU time, over the steps of one
epoch, is the CPU time of a step (data preparation, the same in both, cancels out).

    .venv/bin/python -m bench.two_tower_steps [--items 10000,50000,200000] [--pairs 200000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def data(n_items: int, n_pairs: int, n_users: int, seed: int):
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = np.concatenate([rng.permutation(n_items),
                            rng.choice(n_items, n_pairs - n_items, p=zipf / zipf.sum())])
    users = rng.integers(0, n_users, n_pairs)
    pairs = pd.DataFrame({"user_id": users, "item_id": items,
                          "timestamp": pd.Timestamp("2026-11-01", tz="UTC")
                          - pd.to_timedelta(rng.uniform(0, 60, n_pairs), unit="D")})
    pairs = pairs.drop_duplicates(["user_id", "item_id"], ignore_index=True)
    catalog = pd.DataFrame({"item_id": np.arange(n_items),
                            "category": [f"c{c}" for c in rng.integers(0, 20, n_items)],
                            "tags": [[f"t{t}"] for t in rng.integers(0, 200, n_items)]})
    return pairs, catalog


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,50000,200000")
    p.add_argument("--pairs", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    from models import two_tower as tt

    sizes = [int(x) for x in args.items.split(",")]
    if max(sizes) > args.pairs:
        p.error("--pairs must be at least the largest catalog (every item in a pair)")
    out = {}
    for n_items in sizes:
        pairs, catalog = data(n_items, args.pairs, args.users, args.seed)
        cpu = {}
        for epochs in (1, 2):
            config = tt.TwoTowerConfig(epochs=epochs, seed=args.seed)
            t0 = time.process_time()
            model, _, _ = tt.fit(pairs, catalog, config)
            cpu[epochs] = time.process_time() - t0
        steps = max(1, len(pairs) // config.batch_size)
        out[n_items] = {"pairs": len(pairs), "steps": steps,
                        "cpu_s_per_step": round((cpu[2] - cpu[1]) / steps, 4),
                        "wall_s_per_step_epoch2": round(
                            model.training_log[-1]["seconds"] / steps, 4),
                        "id_rows": int(len(model.known_ids))}
        print(f"{n_items:>8} items: {out[n_items]['cpu_s_per_step'] * 1000:.1f} ms CPU "
              f"per step ({steps} steps, {out[n_items]['id_rows']} id rows)", flush=True)
    base = out[sizes[0]]["cpu_s_per_step"]
    for r in out.values():
        r["over_smallest"] = round(r["cpu_s_per_step"] / base, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
