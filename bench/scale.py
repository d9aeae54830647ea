"""Growth of the daily pipeline with the data: wall time and peak memory per stage.

For each size (events; users and items grown in proportion: 50 events per user, 200 per
item, the generator's Zipf shape), in a fresh home with its own Postgres
(bench/common.py:ScratchHome): ``recs load synthetic`` (timed), then the daily
pipeline's steps (jobs/daily.py, the steps the DAG runs, in its order), each in a process
of its own as each is an Airflow task of its own, timed, with the resident memory of the
step's whole process tree (the Python process, Spark's JVM and its Python workers, the
two-tower fits) sampled every 0.2 s, so each step gets its peak. The Spark master is
``--master`` (``local[2]`` by default; ``spark://host:port`` for a standalone cluster), or
with ``--cluster`` a standalone cluster of two one-core workers started for each size
(tests/spark_cluster.py, as the cluster test starts it), whose daemons, executors and
their Python workers count in every step's memory.

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
    """Peak resident memory (bytes) of this process and its descendants (unless ``me`` is
    false), sampled, and of the processes named in ``pids`` (RECS_BENCH_TREE_PIDS's form)
    and theirs."""

    def __init__(self, every_s: float = 0.2, pids: str = "", me: bool = True) -> None:
        import psutil

        self._roots = [psutil.Process()] if me else []
        for pid in filter(None, pids.split(",")):
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


# Each step: (the key its result is kept under, the function of jobs/daily.py, the keys of
# the earlier results it takes after the day). ALS and co-visitation are spark-submit
# applications in the DAG; here their inline forms run the same code in the step's process.
STEP_CALLS = {
    "extract": ("ex", "extract", ("day",)),
    "prepare": ("pairs", "prepare", ("day", "ex")),
    "train_als": (None, "train_als_inline", ("pairs",)),
    "covisit": (None, "covisit_inline", ("pairs",)),
    "text_embeddings": ("text", "text_embeddings", ("day", "ex")),
    "train_two_tower": ("tt", "train_two_tower", ("day", "pairs", "ex", "text")),
    "item_stats": ("stats", "item_stats", ("day", "ex")),
    "build_index": ("index", "build_index", ("day", "pairs")),
    "evaluate": ("result", "evaluate", ("day", "pairs", "ex", "index", "stats", "text",
                                        "tt")),
    "precompute": ("lists", "precompute", ("day", "pairs", "ex", "index", "text", "tt",
                                           "result")),
    "publish": (None, "publish", ("result", "pairs", "lists", "stats")),
}


def run_step(name: str, state_path: str) -> None:
    """One daily step for DAY in this process, reading the earlier steps' results from
    ``state_path`` (JSON, as Airflow passes them between tasks) and adding its own."""
    from jobs import daily

    state = json.loads(Path(state_path).read_text())
    key, fn, takes = STEP_CALLS[name]
    args = [dt.date.fromisoformat(DAY) if k == "day" else state[k] for k in takes]
    value = getattr(daily, fn)(*args)
    if key is not None:
        state[key] = value
        Path(state_path).write_text(json.dumps(state, default=str))


def run_steps(home: Path, env: dict, until: str = STEPS[-1]) -> dict:
    """The daily steps up to ``until``, each in a process of its own (as each is an
    Airflow task of its own), timed, and the memory of its process tree sampled."""
    state_path = home / "state.json"
    state_path.write_text("{}")
    figures: dict = {}
    for name in STEPS:
        t0 = time.perf_counter()
        with TreeMemory(pids=env.get(TREE_PIDS, "")) as mem:
            r = subprocess.run([sys.executable, "-m", "bench.scale", "--run-step", name,
                                str(state_path)], env=env, cwd=PROJECT_ROOT)
        if r.returncode != 0:
            figures["failed"] = f"{name} exited with {r.returncode}"
            break
        figures[name] = {"seconds": round(time.perf_counter() - t0, 1),
                         "peak_gib": round(mem.peak / 2**30, 2)}
        print(f"  {name:<16} {figures[name]['seconds']:>8.1f} s  "
              f"{figures[name]['peak_gib']:>6.2f} GiB", flush=True)
        if name == "evaluate":
            result = json.loads(state_path.read_text())["result"]
            if not result["passed"]:
                figures["gate"] = result["message"]
                break
        if name == until:
            break
    return figures


def one_size(events: int, master: str, keep: bool, cluster: bool = False,
             until: str = STEPS[-1]) -> dict:
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
        steps = run_steps(scratch.home, scratch.env, until)
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
    tab20 = plt.get_cmap("tab20").colors  # 20 colours: the 12 stages stay apart
    colours = [*tab20[0::2], *tab20[1::2]]
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
    p.add_argument("--until", choices=STEPS, default=STEPS[-1],
                   help="stop after this step (the figures of later steps stay as they were "
                        "with --append)")
    p.add_argument("--run-step", nargs=2, metavar=("STEP", "STATE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_step:
        run_step(*args.run_step)
        return
    sizes = [int(x) for x in args.events.split(",") if x]  # none: re-plot --out
    master = "cluster2" if args.cluster else args.master
    results, earlier = [], {}
    if args.append and Path(args.out).exists():
        for r in json.loads(Path(args.out).read_text())["results"]:
            if r["master"] == master and r["events"] in sizes:
                earlier[r["events"]] = r
            else:
                results.append(r)
    for events in sizes:
        r = one_size(events, args.master, args.keep, args.cluster, args.until)
        if events in earlier and args.until != STEPS[-1]:  # the later steps as they were
            r["steps"] = {**earlier[events]["steps"], **r["steps"]}
        results.append(r)
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
