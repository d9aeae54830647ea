"""Per-variant precompute: its cost against the variant's share of the users.

A fresh home with its own Postgres (bench/common.py:ScratchHome): synthetic data loaded
and the daily pipeline run once (``recs pipeline --inline``, the shipped steps). Then,
for each case, one experiment is created and started with ``jobs.experiments`` (the
previous one stopped) and ``jobs.variants.run`` (what the daily DAG's ``variants`` task
runs: the Spark funnel over the variant's users, checks, publish) is timed end to end:

* ``share ~1.0``: one precompute variant with all the traffic (control weight 0), the
  reference: the cost of computing every user's list again;
* ``share 0.5``, ``0.25``, ``0.1``: one precompute variant (50/50 against the control)
  over a layer range of 1.0, 0.5, 0.2;
* ``two variants 0.25 + 0.25``: two precompute variants of one experiment (control 0.5);
* ``share ~1.0 again``: the reference once more, last (the first Spark job of the process
  pays for warming up: the ratios use the mean of the two).

(Shares are before the 1% global holdout.) Prints each case's seconds, lists and the
ratio of seconds to the reference's, beside the share: the cost follows the share plus a
fixed cost per variant (a Spark job: session, reads of the lake, the shuffle).

    .venv/bin/python -m bench.variant_precompute [--users 10000] [--items 3000]
        [--events 300000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import ScratchHome

PRECOMPUTE = {"rerank_diversity": 0.5}
CASES = (  # name, layer range, variants (key, weight, precompute?)
    ("share ~1.0 (reference)", (0.0, 1.0), [("control", 0.0, False),
                                           ("treatment", 1.0, True)]),
    ("share 0.5", (0.0, 1.0), [("control", 0.5, False), ("treatment", 0.5, True)]),
    ("share 0.25", (0.0, 0.5), [("control", 0.5, False), ("treatment", 0.5, True)]),
    ("share 0.1", (0.0, 0.2), [("control", 0.5, False), ("treatment", 0.5, True)]),
    ("two variants 0.25 + 0.25", (0.0, 1.0), [("control", 0.5, False),
                                             ("t1", 0.25, True), ("t2", 0.25, True)]),
    ("share ~1.0 again", (0.0, 1.0), [("control", 0.0, False), ("treatment", 1.0, True)]),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=3_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--keep", action="store_true", help="keep the scratch home")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    result: dict = {"args": vars(args)}
    with ScratchHome("recs-bench-variants-", keep=args.keep) as scratch:
        scratch.recs("db-up")
        scratch.recs("load", "synthetic", "--users", str(args.users), "--items",
                     str(args.items), "--events", str(args.events))
        t0 = time.perf_counter()
        scratch.recs("pipeline", "--inline")
        result["pipeline_s"] = round(time.perf_counter() - t0, 1)
        scratch.use()
        result["cases"] = measure(scratch.dsn)
    ref = (result["cases"][0]["seconds"] + result["cases"][-1]["seconds"]) / 2
    for c in result["cases"]:
        c["ratio_to_reference"] = round(c["seconds"] / ref, 3)
    print(json.dumps(result, indent=2))
    print(f"\n{'case':28} {'share':>6} {'lists':>7} {'seconds':>8} {'x reference':>12}")
    for c in result["cases"]:
        print(f"{c['case']:28} {c['share']:6.3f} {c['lists']:7d} {c['seconds']:8.1f} "
              f"{c['ratio_to_reference']:12.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def measure(dsn: str) -> list[dict]:
    from core import settings as settings_mod
    from jobs import experiments as registry
    from jobs import variants

    settings_mod._cached = None
    out = []
    previous = None
    for n, (case, (lo, hi), arms) in enumerate(CASES):
        if previous is not None:
            registry.stop(dsn, previous)
        key = f"bench-{n}"
        exp = registry.build(key, layer_range=(lo, hi), variants=[
            registry.Variant(name, w, {"precompute": PRECOMPUTE} if pre else {})
            for name, w, pre in arms])
        registry.create(dsn, exp)
        registry.start(dsn, key)
        previous = key
        t0 = time.perf_counter()
        got = variants.run(dsn=dsn)
        seconds = time.perf_counter() - t0
        share = (hi - lo) * sum(w for _, w, pre in arms if pre)
        lists = sum(v["rows"] for v in got["variants"])
        out.append({"case": case, "share": share, "variants": len(got["variants"]),
                    "lists": lists, "seconds": round(seconds, 1)})
        print(f"{case}: {lists} lists in {seconds:.1f}s", flush=True)
    return out


if __name__ == "__main__":
    main()
