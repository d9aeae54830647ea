"""Peak memory of one two-tower fit against its number of pairs.

For each size (events; users and items in bench/scale.py's proportions: 50 events per
user, 200 per item), the project's synthetic generator makes the events, they are summed
into pairs (models/confidence.py, as prepare does) and written to Parquet with the items;
then ``python -m jobs.train_two_tower`` (the process the daily DAG starts per fit) trains
on them, the resident memory of its process alone sampled every 0.2 s
(bench/scale.py:TreeMemory). The fit
runs ``--max-steps`` steps (default 50): a step's memory does not grow with the data, the
data preparation, the histories and the vectors do, and those are what is measured.

Prints the peak per size, its ratio to the first size's (same run), and the line through
the first and last sizes: GiB at no pairs and bytes per pair.

    .venv/bin/python -m bench.two_tower_memory [--events 1000000,4000000] [--max-steps 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.scale import EVENTS_PER_ITEM, EVENTS_PER_USER, TreeMemory
from core.settings import PROJECT_ROOT


def write_data(events: int, out: Path) -> tuple[int, int]:
    """Synthetic pairs and items under ``out``; (pairs, users)."""
    import pandas as pd

    from jobs.ingest.synthetic import SyntheticConfig, generate_items, iter_events
    from models.confidence import aggregate_pairs

    cfg = SyntheticConfig(n_users=events // EVENTS_PER_USER,
                          n_items=events // EVENTS_PER_ITEM, n_events=events)
    frame = pd.concat(list(iter_events(cfg)), ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    pairs = aggregate_pairs(frame)
    del frame
    pairs.to_parquet(out / "pairs.parquet", index=False)
    generate_items(cfg)[["item_id", "title", "category", "tags"]].to_parquet(
        out / "items.parquet", index=False)
    return len(pairs), int(pairs["user_id"].nunique())


def one_size(events: int, max_steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="recs-bench-tt-memory-") as tmp:
        d = Path(tmp)
        n_pairs, n_users = write_data(events, d)
        config = json.dumps({"max_steps": max_steps})
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "jobs.train_two_tower", "--pairs",
                                 str(d / "pairs.parquet"), "--items",
                                 str(d / "items.parquet"), "--out", str(d / "out"),
                                 "--config", config, "--result", str(d / "result.json")],
                                cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        # The fit's process alone: this one still holds what generating the data left.
        with TreeMemory(pids=str(proc.pid), me=False) as mem:
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the fit on {events:,} events failed:\n{err.decode()[-3000:]}")
        return {"events": events, "pairs": n_pairs, "users": n_users,
                "seconds": round(time.perf_counter() - t0, 1), "peak_bytes": mem.peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", default="1000000,4000000")
    p.add_argument("--max-steps", type=int, default=50)
    args = p.parse_args()
    rows = []
    for events in (int(x) for x in args.events.split(",")):
        rows.append(one_size(events, args.max_steps))
        r = rows[-1]
        print(f"{r['events']:>12,} events {r['pairs']:>12,} pairs {r['users']:>9,} users "
              f"{r['peak_bytes'] / 2**30:6.2f} GiB "
              f"({r['peak_bytes'] / rows[0]['peak_bytes']:.2f}x the first) "
              f"{r['seconds']:7.1f} s", flush=True)
    if len(rows) >= 2 and rows[-1]["pairs"] != rows[0]["pairs"]:
        per_pair = ((rows[-1]["peak_bytes"] - rows[0]["peak_bytes"])
                    / (rows[-1]["pairs"] - rows[0]["pairs"]))
        base = rows[0]["peak_bytes"] - per_pair * rows[0]["pairs"]
        print(f"line through the first and last: {base / 2**30:.2f} GiB + "
              f"{per_pair:.0f} bytes a pair")


if __name__ == "__main__":
    main()
