"""The daily pipeline's steps as plain functions of a logical day and upstream results.

The DAG file (dags/daily.py) only wires these; tests and ``recs`` call them directly.
Every date comes from the run's data interval, never from the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
from pathlib import Path

import numpy as np

from core import lake
from core import settings as settings_mod
from core.settings import PROJECT_ROOT

log = logging.getLogger("recs.daily")

ALS_APP = str(PROJECT_ROOT / "jobs" / "train_als.py")
COVISIT_APP = str(PROJECT_ROOT / "jobs" / "covisit.py")
# Each trained artefact exists twice: on the full window (published lists) and on the
# evaluation split's training part (the gate, and the ranker's training candidates).
FITS = {"full": "full", "eval": "train"}


def day_of(data_interval_end: dt.datetime) -> dt.date:
    """The logical day a run covers: the day that ends at ``data_interval_end``."""
    return (data_interval_end - dt.timedelta(microseconds=1)).date()


def extract(day: dt.date) -> dict:
    from jobs import extract as job

    return job.run(day)


def aggregate_engine(extracted: dict) -> dict:
    """Where prepare and item_stats sum the window's events: Spark from
    ``spark_aggregate_min_events`` events on, else pandas in this process."""
    s = settings_mod.get()
    spark = extracted.get("n_events", 0) >= s.spark_aggregate_min_events
    return {"engine": "spark" if spark else "pandas", "spark_master": s.spark_master,
            "driver_memory": s.spark_driver_memory}


def prepare(day: dt.date, extracted: dict) -> dict:
    from jobs import prepare as job

    s = settings_mod.get()
    out = job.run(day, extracted["events"], holdout=s.holdout_fraction, seed=s.seed,
                  **aggregate_engine(extracted))
    als_dir = lake.partition("als", day)
    out["als_dir"] = str(als_dir)
    out["als_args"] = als_args(out, als_dir)
    covisit_dir = lake.partition("covisit", day)
    out["covisit_dir"] = str(covisit_dir)
    out["covisit_args"] = covisit_args(out, covisit_dir)
    return out


def _inputs(pairs: dict) -> list[str]:
    args = []
    for name, part in FITS.items():
        args += ["--input", f"{name}={pairs[part]}"]
    return args


def als_args(pairs: dict, out_dir: Path) -> list[str]:
    """Arguments of the Spark application jobs/train_als.py for this run."""
    s = settings_mod.get()
    return [*_inputs(pairs), "--out", str(out_dir), "--rank", str(s.als_rank),
            "--reg", str(s.als_reg), "--alpha", str(s.als_alpha), "--iters", str(s.als_iters),
            "--seed", str(s.seed)]


def covisit_args(pairs: dict, out_dir: Path) -> list[str]:
    """Arguments of the Spark application jobs/covisit.py for this run."""
    s = settings_mod.get()
    return [*_inputs(pairs), "--out", str(out_dir), "--window", str(s.covisit_window),
            "--top", str(s.covisit_top), "--min-count", str(s.covisit_min_count)]


def spark_conf() -> dict[str, str]:
    """Spark settings for spark-submit: the project's Python on driver and workers."""
    return {"spark.pyspark.python": sys.executable,
            "spark.pyspark.driver.python": sys.executable,
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "8"}


def train_als_inline(pairs: dict) -> dict:
    """Train in this process (what spark-submit runs), for tests and ``recs`` without
    Airflow."""
    from jobs import train_als

    s = settings_mod.get()
    params = train_als.AlsParams(s.als_rank, s.als_reg, s.als_alpha, s.als_iters, s.seed)
    return train_als.run({name: pairs[part] for name, part in FITS.items()}, pairs["als_dir"],
                         params, master=s.spark_master, driver_memory=s.spark_driver_memory)


def covisit_inline(pairs: dict) -> dict:
    """Co-visitation counts in this process (what spark-submit runs)."""
    from jobs import covisit

    s = settings_mod.get()
    return covisit.run_many({name: pairs[part] for name, part in FITS.items()},
                            pairs["covisit_dir"], window=s.covisit_window, top=s.covisit_top,
                            min_count=s.covisit_min_count, master=s.spark_master,
                            driver_memory=s.spark_driver_memory)


def text_embeddings(day: dt.date, extracted: dict) -> dict:
    from jobs import text_embeddings as job

    return job.run(extracted["items"])


def train_two_tower(day: dt.date, pairs: dict, extracted: dict, text: dict) -> dict:
    """The two-tower model on each fit's pairs, with its own FAISS index. Each fit trains
    on one thread (repeatable) in a process of its own (``python -m jobs.train_two_tower``:
    plain processes, not a multiprocessing pool, which failed in a task run by the Airflow
    scheduler though ``airflow dags test`` ran it). The fits run side by side while their
    pairs together are at most ``two_tower_parallel_max_pairs``, one after the other above
    it (a fit's memory grows with its pairs): the result is the same either way."""
    import json
    import subprocess
    import tempfile

    import pyarrow.parquet as pq

    from jobs.configs import two_tower_config

    s = settings_mod.get()
    config = json.dumps(dataclasses.asdict(two_tower_config(s)))
    n_pairs = sum(pq.read_metadata(pairs[part]).num_rows for part in FITS.values())
    side_by_side = n_pairs <= s.two_tower_parallel_max_pairs
    log.info("two-tower: %d fits on %d pairs in all, %s", len(FITS), n_pairs,
             "side by side" if side_by_side else "one after the other")
    procs: dict[str, subprocess.Popen] = {}
    out = {}

    def wait(name: str, proc: subprocess.Popen, tmp: str) -> None:
        log_text, _ = proc.communicate()
        if proc.returncode != 0:
            for other in procs.values():
                if other.poll() is None:
                    other.kill()
            raise RuntimeError(f"two-tower fit {name!r} failed with status "
                               f"{proc.returncode}:\n{log_text[-3000:]}")
        res = json.loads((Path(tmp) / f"{name}.json").read_text())
        out[name] = {k: res[k] for k in ("dir", "train_seconds", "loss", "items_ip")}

    with tempfile.TemporaryDirectory(prefix="recs-two-tower-") as tmp:
        for name, part in FITS.items():
            argv = [sys.executable, "-m", "jobs.train_two_tower", "--pairs", pairs[part],
                    "--items", extracted["items"], "--config", config,
                    "--out", str(lake.partition("two_tower", day) / name),
                    "--exact-max", str(s.exact_index_max_items),
                    "--result", str(Path(tmp) / f"{name}.json")]
            if extracted.get("users"):
                argv += ["--users", extracted["users"]]
            if s.two_tower_text:
                argv += ["--text-store", text["store"]]
            procs[name] = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
            if not side_by_side:
                wait(name, procs[name], tmp)
        for name, proc in procs.items():
            if name not in out:
                wait(name, proc, tmp)
    return {"dir": str(lake.partition("two_tower", day)), "fits": out,
            "side_by_side": side_by_side}


def fit_artifacts(fit: str, als_dir: str, two_tower_dir: str, covisit_dir: str,
                  text_store: str):
    """One fit's trained artefacts (``fit``: full or eval) as the funnel reads them."""
    import pandas as pd

    from jobs.train_als import load_factors
    from models.funnel import Artifacts

    store = pd.read_parquet(text_store)
    return Artifacts(
        als=load_factors(Path(als_dir) / fit),
        two_tower=load_factors(Path(two_tower_dir) / fit),
        covisit=pd.read_parquet(Path(covisit_dir) / fit / "covisit.parquet"),
        text_ids=store["item_id"].to_numpy(),
        text=np.stack(store["vector"].to_numpy()) if len(store) else None)


def user_context(users_path: str | None):
    """(onboarding preferences, countries) of the users snapshot."""
    import pandas as pd

    from jobs.funnel import read_preferences

    prefs = read_preferences(users_path)
    countries = None
    if users_path:
        countries = pd.read_parquet(users_path).set_index("user_id")["country"]
    return prefs, countries


def _signals(day: dt.date, fit: str, pairs: dict, extracted: dict, text: dict,
             two_tower: dict):
    """The funnel's signals from one fit's artefacts (``fit``: full or eval)."""
    import pandas as pd

    from jobs.configs import funnel_config
    from models.funnel import build_signals

    s = settings_mod.get()
    train = pd.read_parquet(pairs[FITS[fit]])
    items = pd.read_parquet(extracted["items"])
    art = fit_artifacts(fit, pairs["als_dir"], two_tower["dir"], pairs["covisit_dir"],
                        text["store"])
    prefs, countries = user_context(extracted.get("users"))
    as_of = pd.Timestamp(extracted["data_end"])
    return build_signals(train, items, art, as_of=as_of, config=funnel_config(s),
                         preferences=prefs, countries=countries), train, items


def item_stats(day: dt.date, extracted: dict) -> dict:
    from jobs import item_stats as job

    s = settings_mod.get()
    return job.run(day, extracted["events"], extracted["items"], k=s.trending_k,
                   recent_days=s.trending_days, data_end=extracted["data_end"],
                   users_path=extracted.get("users"), **aggregate_engine(extracted))


def build_index(day: dt.date, pairs: dict) -> dict:
    from jobs import build_index as job

    s = settings_mod.get()
    return job.run(day, str(Path(pairs["als_dir"]) / "full"),
                   exact_max=s.exact_index_max_items, seed=s.seed)


def evaluate(day: dt.date, pairs: dict, extracted: dict, index: dict, stats: dict,
             text: dict, two_tower: dict) -> dict:
    """The gate and the day's ranker: the funnel fitted on the training part (``eval``
    fit), the ranker cross-fitted on the held-out users' candidates, every generator, the
    ranker, the full pipeline and popularity scored on the test pairs; the lists to
    publish chosen (models.gate.choose), the run recorded in ``model_runs``."""
    import pandas as pd

    from jobs import evaluate as job
    from jobs import precompute as pre
    from jobs.configs import digest, funnel_config, model_params
    from models.gate import gate_table

    s = settings_mod.get()
    version = job.model_version(day, digest(s))
    sig, train, items = _signals(day, "eval", pairs, extracted, text, two_tower)
    test = pd.read_parquet(pairs["test"])
    # Coverage is over the catalog: generators that read the catalog (new items, text,
    # the two-tower item tower) recommend items nobody has consumed yet, which a count of
    # the items in the pairs would leave out (a catalog loaded with `recs load items`
    # often has such items; coverage then failed with "n_catalog is smaller than ...").
    n_catalog = max(int(pairs["n_items"]), int(items["item_id"].nunique()))
    metrics, ranker, info = gate_table(
        sig, funnel_config(s), train, test, n_catalog=n_catalog,
        titles=items.set_index("item_id")["title"], rules=pre.load_rules(items),
        folds=s.ranker_folds, max_users=s.gate_max_users)
    ranker_dir = lake.partition("ranker", day)
    with lake.atomic_dir(ranker_dir) as tmp:
        ranker.save(tmp)
    base = funnel_config(s).ranker  # each fold's chosen capacity: fold_training[].hidden
    metrics["ranker_training"] = {**info, "features": ranker.names,
                                  "params": {**dataclasses.asdict(base),
                                             "hidden": list(base.hidden)}}
    metrics["two_tower_training"] = two_tower["fits"]["full"]
    artifacts = {"events": extracted["events"], "pairs": pairs["full"],
                 "als": pairs["als_dir"], "covisit": pairs["covisit_dir"],
                 "two_tower": two_tower["dir"], "ranker": str(ranker_dir),
                 "text": text["store"], "index": index["dir"], "item_stats": stats["lists"],
                 "items": extracted["items"], "users": extracted.get("users")}
    result = job.run(day, version=version, metrics=metrics, pairs=pairs,
                     extract=extracted, index_meta=index["meta"], artifacts=artifacts,
                     params=model_params(s), digest=digest(s), margin=s.gate_margin)
    return {**result, "ranker_dir": str(ranker_dir)}


def precompute(day: dt.date, pairs: dict, extracted: dict, index: dict, text: dict,
               two_tower: dict, result: dict) -> dict:
    """The chosen lists (``result['model']``: the full pipeline or one generator) for
    every user, from the ``full`` fit, re-ranked with the rules, with reasons: the
    catalog's signals here, the users' lists in Spark (jobs/spark_funnel.py)."""
    import pandas as pd

    from jobs import precompute as job
    from jobs.configs import funnel_config
    from models.funnel import item_signals

    s = settings_mod.get()
    train = pd.read_parquet(pairs[FITS["full"]])
    items = pd.read_parquet(extracted["items"])
    art = fit_artifacts("full", pairs["als_dir"], two_tower["dir"], pairs["covisit_dir"],
                        text["store"])
    _, countries = user_context(extracted.get("users"))
    catalog = item_signals(train, items, art, as_of=pd.Timestamp(extracted["data_end"]),
                           config=funnel_config(s), countries=countries)
    inputs = {"pairs": pairs[FITS["full"]], "users": extracted.get("users"),
              "als": str(Path(pairs["als_dir"]) / "full"),
              "two_tower": str(Path(two_tower["dir"]) / "full"), "items": extracted["items"]}
    return job.run_funnel(day, catalog, inputs=inputs, items=items,
                          ranker_dir=result["ranker_dir"],
                          factors_dir=str(Path(pairs["als_dir"]) / "full"),
                          index_dir=index["dir"], top_k=s.top_k, similar_k=s.similar_k,
                          config=funnel_config(s), rules=job.load_rules(items),
                          model=result["model"], master=s.spark_master,
                          driver_memory=s.spark_driver_memory)


def publish(result: dict, pairs: dict, lists: dict, stats: dict) -> dict:
    from jobs import publish as job

    s = settings_mod.get()
    return job.run(result["version"], lists=lists, trending_path=stats["lists"],
                   popularity_path=stats["popularity"], pairs_path=pairs["full"],
                   keep=s.keep_versions)


def variants(published: dict) -> dict:
    """The lists of the running experiments' precompute variants (jobs/variants.py) for
    the version just published; nothing for a version that did not go live (a
    backfill)."""
    from jobs import variants as job

    if not published.get("live"):
        return {"version": published.get("version"), "variants": [],
                "skipped": "the version did not go live"}
    return job.run(version=published["version"])


def run_all(day: dt.date) -> dict:
    """The whole daily pipeline in this process (the DAG runs the same steps)."""
    ex = extract(day)
    pairs = prepare(day, ex)
    train_als_inline(pairs)
    covisit_inline(pairs)
    text = text_embeddings(day, ex)
    tt = train_two_tower(day, pairs, ex, text)
    stats = item_stats(day, ex)
    index = build_index(day, pairs)
    result = evaluate(day, pairs, ex, index, stats, text, tt)
    if result["passed"]:
        lists = precompute(day, pairs, ex, index, text, tt, result)
        result["publish"] = publish(result, pairs, lists, stats)
        result["variants"] = variants(result["publish"])
    return result
