"""Growth of the daily pipeline with the data: wall time and peak memory per stage.

For each size (events; users and items grown in proportion: 50 events per user, 200 per
item, the generator's Zipf shape), in a fresh home with its own Postgres
(bench/common.py:ScratchHome): ``recs load synthetic`` (timed), then the daily
pipeline's steps (jobs/daily.py, the steps the DAG runs, in its order) in a child
process that times each step and samples the resident memory of its whole process tree
(the Python process, Spark's JVM and its Python workers, the two-tower fits) every
0.2 s, so each step gets its peak. The Spark master is ``--master`` (``local[2]`` by
default; ``spark://host:port`` for a standalone cluster).

Prints a table per size, writes the figures to ``--out`` (JSON) and, with two sizes or
more, a log-log plot of seconds per stage against events (``--plot``) and the fitted
slope per stage (1 = linear in the data).

    .venv/bin/python -m bench.scale [--events 1000000,10000000,50000000] [--master local[2]]

``--append`` adds this run's sizes to the results already in ``--out`` (sizes measured
again replace theirs), so sizes can be measured one invocation at a time; the slopes and
the plot then cover them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import ScratchHome
from core.settings import PROJECT_ROOT

EVENTS_PER_USER = 50
EVENTS_PER_ITEM = 200
DAY = "2026-10-31"  # the synthetic data's newest day
STEPS = ("extract", "prepare", "train_als", "covisit", "text_embeddings", "train_two_tower",
         "item_stats", "build_index", "evaluate", "precompute", "publish")


class TreeMemory:
    """Peak resident memory (bytes) of this process and its descendants, sampled."""

    def __init__(self, every_s: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process()
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.every_s)

    def __enter__(self) -> TreeMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_steps(out_path: str) -> None:
    """The daily steps for DAY in this process, each timed and its memory sampled."""
    from jobs import daily

    day = dt.date.fromisoformat(DAY)
    figures: dict = {}
    state: dict = {}

    def step(name: str, fn):
        t0 = time.perf_counter()
        with TreeMemory() as mem:
            value = fn()
        figures[name] = {"seconds": round(time.perf_counter() - t0, 1),
                         "peak_gib": round(mem.peak / 2**30, 2)}
        print(f"  {name:<16} {figures[name]['seconds']:>8.1f} s  "
              f"{figures[name]['peak_gib']:>6.2f} GiB", flush=True)
        Path(out_path).write_text(json.dumps(figures))
        return value

    state["ex"] = step("extract", lambda: daily.extract(day))
    state["pairs"] = step("prepare", lambda: daily.prepare(day, state["ex"]))
    step("train_als", lambda: daily.train_als_inline(state["pairs"]))
    step("covisit", lambda: daily.covisit_inline(state["pairs"]))
    state["text"] = step("text_embeddings", lambda: daily.text_embeddings(day, state["ex"]))
    state["tt"] = step("train_two_tower", lambda: daily.train_two_tower(
        day, state["pairs"], state["ex"], state["text"]))
    state["stats"] = step("item_stats", lambda: daily.item_stats(day, state["ex"]))
    state["index"] = step("build_index", lambda: daily.build_index(day, state["pairs"]))
    state["result"] = step("evaluate", lambda: daily.evaluate(
        day, state["pairs"], state["ex"], state["index"], state["stats"], state["text"],
        state["tt"]))
    if not state["result"]["passed"]:
        figures["gate"] = state["result"]["message"]
        Path(out_path).write_text(json.dumps(figures))
        return
    state["lists"] = step("precompute", lambda: daily.precompute(
        day, state["pairs"], state["ex"], state["index"], state["text"], state["tt"],
        state["result"]))
    step("publish", lambda: daily.publish(state["result"], state["pairs"], state["lists"],
                                          state["stats"]))
    Path(out_path).write_text(json.dumps(figures))


def one_size(events: int, master: str, keep: bool) -> dict:
    users, items = events // EVENTS_PER_USER, events // EVENTS_PER_ITEM
    print(f"{events:,} events, {users:,} users, {items:,} items ({master}):", flush=True)
    with ScratchHome("recs-bench-scale-", keep=keep) as scratch:
        scratch.env["RECS_SPARK_MASTER"] = master
        scratch.recs("db-up")
        t0 = time.perf_counter()
        with TreeMemory() as mem:
            scratch.recs("load", "synthetic", "--users", str(users), "--items", str(items),
                         "--events", str(events))
        load = {"seconds": round(time.perf_counter() - t0, 1),
                "peak_gib": round(mem.peak / 2**30, 2)}
        print(f"  {'load':<16} {load['seconds']:>8.1f} s  {load['peak_gib']:>6.2f} GiB",
              flush=True)
        out = scratch.home / "steps.json"
        r = subprocess.run([sys.executable, "-m", "bench.scale", "--run-steps", str(out)],
                           env=scratch.env, cwd=PROJECT_ROOT)
        steps = json.loads(out.read_text()) if out.exists() else {}
        if r.returncode != 0:
            steps["failed"] = f"the steps exited with {r.returncode}"
    return {"events": events, "users": users, "items": items, "master": master,
            "load": load, "steps": steps}


def slopes(results: list[dict]) -> dict[str, float]:
    """Per step: the slope of log(seconds) on log(events) (1: linear)."""
    import numpy as np

    out = {}
    for name in ("load", *STEPS):
        xs, ys = [], []
        for r in results:
            fig = r["load"] if name == "load" else r["steps"].get(name)
            if isinstance(fig, dict) and fig.get("seconds", 0) > 0:
                xs.append(np.log(r["events"]))
                ys.append(np.log(fig["seconds"]))
        if len(xs) >= 2:
            out[name] = round(float(np.polyfit(xs, ys, 1)[0]), 2)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ("load", *STEPS):
        pts = [(r["events"], (r["load"] if name == "load" else r["steps"].get(name, {}))
                .get("seconds")) for r in results]
        pts = [(x, y) for x, y in pts if y]
        if len(pts) >= 2:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events")
    ax.set_ylabel("seconds")
    ax.set_title("Daily pipeline: seconds per stage against events")
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", default="1000000,10000000,50000000")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", default="var/bench/scale.json")
    p.add_argument("--plot", default="docs/img/scale.png")
    p.add_argument("--keep", action="store_true", help="keep the scratch homes")
    p.add_argument("--append", action="store_true",
                   help="add to the results already in --out (same master)")
    p.add_argument("--run-steps", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_steps:
        run_steps(args.run_steps)
        return
    sizes = [int(x) for x in args.events.split(",")]
    results = []
    if args.append and Path(args.out).exists():
        results = [r for r in json.loads(Path(args.out).read_text())["results"]
                   if r["master"] == args.master and r["events"] not in sizes]
    for events in sizes:
        results.append(one_size(events, args.master, args.keep))
        results.sort(key=lambda r: r["events"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"results": results}, indent=2))
    summary = {"results": results, "slopes": slopes(results)}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    if len(results) >= 2:
        plot(results, Path(args.plot))
    print(json.dumps(summary["slopes"], indent=2))


if __name__ == "__main__":
    main()
