"""Precompute throughput of the funnel against brute-force ALS top-100, in the same run.

On a MovieLens folder (default ml-latest-small), set up once and not timed: the pairs and
the stratified 75/25 split (seed 42) of ``recs evaluate``; the artefacts (ALS, two-tower
with text vectors, co-visitation) fitted on the training part in a local[2] Spark
session, the signals built from it, and the ranker cross-fitted on the test users'
candidates as the daily gate does (``models.gate.gate_table``). The timed signals are
the ones the ranker learned from (``--refit`` refits the artefacts on all the pairs, as
the daily ``full`` fit does).

Timed, per repeat, on the same users (default: all):

* **funnel**: ``rank_users`` + ``final_lists`` (top 100, default re-rank config and
  rules, with reasons) - what the daily DAG's precompute step runs;
* **stages**: the same work by hand - candidates (``generators.generate``), features
  (``features.features``), ranker scoring (``Ranker.score``), the per-user keep-300 sort of
  ``rank_users``, re-rank + reasons (``final_lists``); re-rank alone
  (``with_reasons=False``) is timed too, so reasons = the difference;
* **reference**: brute-force numpy - ALS user vectors @ all item vectors, history set to
  -inf, ``argpartition`` top 100 then sort, in user batches of 256 like the funnel.

Prints users/s of each and the ratio funnel / brute force (medians of the repeats), and
writes the figures, load averages and the command to ``var/bench/precompute.json``.
Torch runs on ``RankerConfig.threads`` (1) threads, as the ranker trains.

    .venv/bin/python -m bench.precompute [--data ../shared/data/ml-latest-small]
        [--users N] [--repeats 3] [--refit] [--out var/bench/precompute.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from core import settings as settings_mod
from core.settings import PROJECT_ROOT

K = 100
BATCH = 256
CODE = ("models/funnel.py", "models/signals.py", "models/generators.py", "models/features.py",
        "models/reasons.py", "models/ranker.py", "models/rerank.py")


def setup(path: Path, settings: settings_mod.Settings, *, refit: bool = False) -> dict:
    """Signals, ranker, titles and config for ``path`` (the untimed part)."""
    from jobs.configs import funnel_config
    from jobs.funnel import fit_artifacts
    from jobs.train_als import spark_session
    from jobs.train_two_tower import catalog, protocol_data, text_matrix
    from models.funnel import build_signals
    from models.gate import gate_table

    timings = {}
    t = time.perf_counter()
    pairs, train, test, items = protocol_data(path, settings.holdout_fraction, settings.seed)
    items = catalog(items, pairs)
    text = (items["item_id"].to_numpy(), text_matrix(items)) if settings.two_tower_text \
        else None
    timings["data_seconds"] = round(time.perf_counter() - t, 1)
    cfg = funnel_config(settings)
    part, labels = train, test
    spark = spark_session("local[2]", app="recs-bench-precompute",
                          driver_memory=settings.spark_driver_memory)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        t = time.perf_counter()
        art = fit_artifacts(part, items, spark=spark, settings=settings, text=text)
        sig = build_signals(part, items, art, as_of=part["timestamp"].max(), config=cfg)
        timings["fit_seconds"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        _, ranker, info = gate_table(
            sig, cfg, part, labels, n_catalog=int(pairs["item_id"].nunique()),
            titles=items.set_index("item_id")["title"], folds=settings.ranker_folds,
            max_users=settings.gate_max_users)
        timings["ranker_seconds"] = round(time.perf_counter() - t, 1)
        if refit:
            t = time.perf_counter()
            art = fit_artifacts(pairs, items, spark=spark, settings=settings, text=text)
            sig = build_signals(pairs, items, art, as_of=pairs["timestamp"].max(), config=cfg)
            timings["refit_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        spark.stop()
    return {"sig": sig, "ranker": ranker, "ranker_info": info, "cfg": cfg,
            "titles": items.set_index("item_id")["title"], "timings": timings,
            "n_pairs": len(pairs), "n_train": len(train), "n_part": len(part),
            "n_labels": len(labels)}


def funnel_run(sig, users: np.ndarray, cfg, ranker, titles):
    """The precompute step's funnel: ranked candidates, then re-ranked top ``K`` lists."""
    from models.funnel import rank_users
    from models.reasons import final_lists
    from models.rerank import Rules

    ranked = rank_users(sig, users, cfg, ranker)
    return final_lists(sig, ranked, titles, K, config=cfg.rerank, rules=Rules())


def funnel_stages(sig, users: np.ndarray, cfg, ranker, titles, keep: int = 300):
    """The funnel stage by stage (``rank_users`` with its stage timings, then
    ``final_lists`` without and with reasons), timed.

    Returns (seconds per stage, Ranked, lists, candidates per user)."""
    from models.funnel import rank_users
    from models.reasons import final_lists
    from models.rerank import Rules

    sec: dict[str, float] = {}
    ranked = rank_users(sig, users, cfg, ranker, keep=keep, timings=sec)
    n_cand = sec.pop("n_candidates")
    t0 = time.perf_counter()
    final_lists(sig, ranked, titles, K, config=cfg.rerank, rules=Rules(), with_reasons=False)
    t1 = time.perf_counter()
    lists = final_lists(sig, ranked, titles, K, config=cfg.rerank, rules=Rules())
    sec["rerank_reasons"] = time.perf_counter() - t1
    sec["rerank"] = t1 - t0
    return sec, ranked, lists, n_cand / max(len(users), 1)


def brute_force(sig, users: np.ndarray, k: int = K) -> list[np.ndarray]:
    """Per user: the catalog rows of the top ``k`` ALS scores outside the history."""
    out = []
    items_t = np.ascontiguousarray(sig.als_items.T)
    k = min(k, sig.n_items)
    for a in range(0, len(users), BATCH):
        rows = users[a:a + BATCH]
        s = sig.als_users[rows] @ items_t
        for r, u in enumerate(rows):
            s[r, sig.history[u]] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out.extend(np.take_along_axis(part, order, 1))
    return out


def _blas() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: i.get(k) for k in ("internal_api", "num_threads")} for i in threadpool_info()]


def _code_digests() -> dict[str, str]:
    """Short sha256 of the funnel's source files: which code the figures are for."""
    return {f: hashlib.sha256((PROJECT_ROOT / f).read_bytes()).hexdigest()[:12] for f in CODE
            if (PROJECT_ROOT / f).exists()}


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def run(path: Path, *, n_users: int | None = None, repeats: int = 3, refit: bool = False,
        settings: settings_mod.Settings | None = None, log=print) -> dict:
    """Set up on ``path``, then time the funnel, its stages and brute force ``repeats``
    times on the same users; figures are medians."""
    import torch

    settings = settings or settings_mod.load()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    code = _code_digests()
    t = time.perf_counter()
    ctx = setup(path, settings, refit=refit)
    setup_seconds = round(time.perf_counter() - t, 1)
    sig, ranker, cfg, titles = ctx["sig"], ctx["ranker"], ctx["cfg"], ctx["titles"]
    users = np.arange(sig.n_users)
    if n_users is not None and n_users < len(users):
        users = np.sort(np.random.default_rng(settings.seed).choice(users, n_users,
                                                                    replace=False))
    log(f"setup {setup_seconds}s {ctx['timings']}; {len(users)} users, {sig.n_items} items; "
        f"load average {load_start}")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.ranker.threads)
    runs = []
    try:
        for rep in range(repeats):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            lists = funnel_run(sig, users, cfg, ranker, titles)
            t_funnel = time.perf_counter() - t0
            stages, _, staged, per_user = funnel_stages(sig, users, cfg, ranker, titles)
            if rep == 0:  # the hand-staged path is the funnel's own work
                same = all(np.array_equal(a, b) for a, b in
                           zip(lists["items"], staged["items"], strict=True))
                if not same or len(lists) != len(staged):
                    raise AssertionError("staged funnel lists differ from rank_users + "
                                         "final_lists")
            t0 = time.perf_counter()
            bf = brute_force(sig, users)
            t_bf = time.perf_counter() - t0
            assert len(bf) == len(users) and all(len(x) == min(K, sig.n_items) for x in bf)
            row = {"repeat": rep + 1, "loadavg_1m": round(load, 2),
                   "funnel_seconds": round(t_funnel, 3), "brute_force_seconds": round(t_bf, 4),
                   "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
                   "candidates_per_user": round(per_user, 1)}
            runs.append(row)
            log(f"repeat {rep + 1}: funnel {t_funnel:.1f}s ({_rate(len(users), t_funnel)} "
                f"users/s), brute force {t_bf:.3f}s ({_rate(len(users), t_bf)} users/s), "
                f"stages {row['stage_seconds']}, load {row['loadavg_1m']}")
    finally:
        torch.set_num_threads(prev_threads)
    med = statistics.median
    t_funnel = med(r["funnel_seconds"] for r in runs)
    t_bf = med(r["brute_force_seconds"] for r in runs)
    stage = {k: round(med(r["stage_seconds"][k] for r in runs), 3) for k in runs[0]
             ["stage_seconds"]}
    stage["reasons"] = round(stage["rerank_reasons"] - stage["rerank"], 3)
    stage["candidates_features"] = round(stage["candidates"] + stage["features"], 3)
    n = len(users)
    return {
        "started": started, "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": str(path), "code_sha256": code,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": cfg.ranker.threads, "blas": _blas()},
        "loadavg_at_start": load_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "n_pairs": ctx["n_pairs"], "n_train": ctx["n_train"], "n_signal_pairs": ctx["n_part"],
        "n_ranker_labels": ctx["n_labels"], "refit": refit, "setup_seconds": setup_seconds,
        "setup": ctx["timings"], "ranker": ctx["ranker_info"],
        "users": n, "items": int(sig.n_items), "k": K, "user_batch": BATCH, "repeats": repeats,
        "candidates_per_user": runs[0]["candidates_per_user"],
        "funnel_seconds": t_funnel, "funnel_users_per_s": _rate(n, t_funnel),
        "brute_force_seconds": t_bf, "brute_force_users_per_s": _rate(n, t_bf),
        "ratio_funnel_over_brute_force": round(_rate(n, t_funnel) / _rate(n, t_bf), 5),
        "stage_seconds": stage,
        "stage_share_of_funnel": {k: round(v / t_funnel, 3) for k, v in stage.items()
                                  if k in ("candidates", "features", "ranker_score",
                                           "sort_keep", "rerank_reasons")},
        "runs": runs,
    }


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-latest-small")
    p.add_argument("--users", type=int, help="a seeded sample of this many users (default all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--refit", action="store_true",
                   help="refit the artefacts on the whole training part before timing")
    p.add_argument("--out", help="JSON result (default <RECS_HOME>/bench/precompute.json)")
    args = p.parse_args()
    if args.repeats < 1 or (args.users is not None and args.users < 1):
        p.error("--repeats and --users must be >= 1")
    path = Path(args.data)
    if not (path / "ratings.csv").exists():
        print(f"skipped: no MovieLens folder at {path} (ratings.csv missing)")
        return
    logging.basicConfig(level=logging.WARNING)
    settings = settings_mod.load()
    out = Path(args.out) if args.out else Path(settings.home) / "bench" / "precompute.json"
    result = run(path, n_users=args.users, repeats=args.repeats, refit=args.refit,
                 settings=settings, log=lambda m: print(m, flush=True))
    exe = Path(sys.executable)
    if exe.is_relative_to(PROJECT_ROOT):
        exe = exe.relative_to(PROJECT_ROOT)
    result["command"] = shlex.join([str(exe), "-m", "bench.precompute", *sys.argv[1:]])
    _write(out, result)
    s = result["stage_seconds"]
    print(f"\n{path}: {result['users']} users, {result['items']} items, top-{K}, "
          f"~{result['candidates_per_user']:.0f} candidates per user, median of "
          f"{result['repeats']}; load average {result['loadavg_at_start']} -> "
          f"{result['loadavg_at_end']} on {result['machine']['cpus']} CPUs\n")
    print("| path | seconds | users/s |")
    print("|---|---|---|")
    print(f"| funnel (rank_users + final_lists) | {result['funnel_seconds']} | "
          f"{result['funnel_users_per_s']} |")
    print(f"| brute-force ALS top-{K} (numpy) | {result['brute_force_seconds']} | "
          f"{result['brute_force_users_per_s']} |")
    print(f"\nfunnel / brute force (users/s): {result['ratio_funnel_over_brute_force']}")
    print(f"stages (s): candidates {s['candidates']}, features {s['features']}, ranker "
          f"{s['ranker_score']}, keep-300 sort {s['sort_keep']}, re-rank {s['rerank']} + "
          f"reasons {s['reasons']} = {s['rerank_reasons']}")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
