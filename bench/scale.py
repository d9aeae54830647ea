"""Growth of the daily pipeline with the data: wall time and peak memory per stage.

For each size (events; users and items grown in proportion: 50 events per user, 200 per
item, the generator's Zipf shape), in a fresh home with its own Postgres
(bench/common.py:ScratchHome): ``recs load synthetic`` (timed), then the daily
pipeline's steps (jobs/daily.py, the steps the DAG runs, in its order) in a child
process that times each step and samples the resident memory of its whole process tree
(the Python process, Spark's JVM and its Python workers, the two-tower fits) every
0.2 s, so each step gets its peak. The Spark master is ``--master`` (``local[2]`` by
default; ``spark://host:port`` for a standalone cluster), or with ``--cluster`` a
standalone cluster of two one-core workers started for each size (tests/spark_cluster.py,
as the cluster test starts it), whose daemons, executors and their Python workers count
in every step's memory.

Prints a table per size, writes the figures to ``--out`` (JSON) and, with two sizes or
more, a log-log plot of seconds per stage against events (``--plot``) and the fitted
slope per stage (1 = linear in the data).

    .venv/bin/python -m bench.scale [--events 1000000,10000000,50000000] [--master local[2]]

``--append`` adds this run's sizes to the results already in ``--out`` (sizes measured
again on the same master replace theirs), so sizes and masters can be measured one
invocation at a time; the slopes and the plot then cover them all (``--append --events
""`` only redraws them).
"""

from __future__ import annotations

import argparse
import contextlib
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


TREE_PIDS = "RECS_BENCH_TREE_PIDS"  # more roots whose trees count (a cluster's daemons)


class TreeMemory:
    """Peak resident memory (bytes) of this process and its descendants, sampled (and of
    the processes named in RECS_BENCH_TREE_PIDS and theirs)."""

    def __init__(self, every_s: float = 0.2) -> None:
        import os

        import psutil

        self._proc = psutil.Process()
        self._roots = [self._proc]
        for pid in filter(None, os.environ.get(TREE_PIDS, "").split(",")):
            try:
                self._roots.append(psutil.Process(int(pid)))
            except psutil.Error:
                pass
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        procs = {}
        for root in self._roots:
            try:
                for p in [root, *root.children(recursive=True)]:
                    procs[p.pid] = p
            except psutil.Error:
                pass
        total = 0
        for p in procs.values():
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


def one_size(events: int, master: str, keep: bool, cluster: bool = False) -> dict:
    users, items = events // EVENTS_PER_USER, events // EVENTS_PER_ITEM
    label = "standalone cluster, two one-core workers" if cluster else master
    print(f"{events:,} events, {users:,} users, {items:,} items ({label}):", flush=True)
    with ScratchHome("recs-bench-scale-", keep=keep) as scratch, \
            contextlib.ExitStack() as stack:
        if cluster:
            from tests.spark_cluster import standalone

            c = stack.enter_context(standalone(scratch.home / "cluster", workers=2))
            master = c.url
            scratch.env[TREE_PIDS] = ",".join(map(str, c.pids))
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
    return {"events": events, "users": users, "items": items,
            "master": "cluster2" if cluster else master, "load": load, "steps": steps}


def _seconds(r: dict, name: str) -> float | None:
    fig = r["load"] if name == "load" else r["steps"].get(name)
    return fig.get("seconds") if isinstance(fig, dict) else None


def slopes(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per master, per step: the slope of log(seconds) on log(events) (1: linear)."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for master in sorted({r["master"] for r in results}):
        for name in ("load", *STEPS):
            pts = [(np.log(r["events"]), np.log(_seconds(r, name))) for r in results
                   if r["master"] == master and (_seconds(r, name) or 0) > 0]
            if len(pts) >= 2:
                xs, ys = zip(*pts, strict=True)
                out.setdefault(master, {})[name] = round(float(np.polyfit(xs, ys, 1)[0]), 2)
    return out


def plot(results: list[dict], path: Path) -> None:
    """Seconds per step against events, log-log: one colour per step, one line style
    per master."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, master in enumerate(sorted({r["master"] for r in results})):
        for n, name in enumerate(("load", *STEPS)):
            pts = [(r["events"], _seconds(r, name)) for r in results
                   if r["master"] == master and _seconds(r, name)]
            if len(pts) >= 2:
                ax.plot(*zip(*sorted(pts), strict=True), marker="o",
                        linestyle=("-", "--", ":")[m % 3], color=colours[n % len(colours)],
                        label=f"{name} ({master})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the window")
    ax.set_ylabel("seconds")
    ax.set_title("Daily pipeline: seconds per stage against events")
    ax.legend(fontsize=6, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", default="1000000,10000000,50000000")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--cluster", action="store_true",
                   help="a standalone cluster of two one-core workers instead of --master")
    p.add_argument("--out", default="var/bench/scale.json")
    p.add_argument("--plot", default="docs/img/scale.png")
    p.add_argument("--keep", action="store_true", help="keep the scratch homes")
    p.add_argument("--append", action="store_true",
                   help="add to the results already in --out")
    p.add_argument("--run-steps", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_steps:
        run_steps(args.run_steps)
        return
    sizes = [int(x) for x in args.events.split(",") if x]  # none: re-plot --out
    master = "cluster2" if args.cluster else args.master
    results = []
    if args.append and Path(args.out).exists():
        results = [r for r in json.loads(Path(args.out).read_text())["results"]
                   if not (r["master"] == master and r["events"] in sizes)]
    for events in sizes:
        results.append(one_size(events, args.master, args.keep, args.cluster))
        results.sort(key=lambda r: (r["master"], r["events"]))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"results": results}, indent=2))
    summary = {"results": results, "slopes": slopes(results)}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    if any(len(v) for v in summary["slopes"].values()):
        plot(results, Path(args.plot))
    print(json.dumps(summary["slopes"], indent=2))


if __name__ == "__main__":
    main()
