"""The daily pipeline's steps as plain functions of a logical day and upstream results.

The DAG file (dags/daily.py) only wires these; tests and ``recs`` call them directly.
Every date comes from the run's data interval, never from the clock.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from core import lake
from core import settings as settings_mod
from core.settings import PROJECT_ROOT

ALS_APP = str(PROJECT_ROOT / "jobs" / "train_als.py")


def day_of(data_interval_end: dt.datetime) -> dt.date:
    """The logical day a run covers: the day that ends at ``data_interval_end``."""
    return (data_interval_end - dt.timedelta(microseconds=1)).date()


def extract(day: dt.date) -> dict:
    from jobs import extract as job

    return job.run(day)


def prepare(day: dt.date, extracted: dict) -> dict:
    from jobs import prepare as job

    s = settings_mod.get()
    out = job.run(day, extracted["events"], holdout=s.holdout_fraction, seed=s.seed)
    als_dir = lake.partition("als", day)
    out["als_dir"] = str(als_dir)
    out["als_args"] = als_args(out, als_dir)
    return out


def als_args(pairs: dict, out_dir: Path) -> list[str]:
    """Arguments of the Spark application jobs/train_als.py for this run."""
    s = settings_mod.get()
    return ["--input", f"full={pairs['full']}", "--input", f"eval={pairs['train']}",
            "--out", str(out_dir), "--rank", str(s.als_rank), "--reg", str(s.als_reg),
            "--alpha", str(s.als_alpha), "--iters", str(s.als_iters), "--seed", str(s.seed)]


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
    return train_als.run({"full": pairs["full"], "eval": pairs["train"]}, pairs["als_dir"],
                         params, master=s.spark_master, driver_memory=s.spark_driver_memory)


def item_stats(day: dt.date, extracted: dict) -> dict:
    from jobs import item_stats as job

    s = settings_mod.get()
    return job.run(day, extracted["events"], extracted["items"], k=s.trending_k,
                   recent_days=s.trending_days, data_end=extracted["data_end"],
                   users_path=extracted.get("users"))


def build_index(day: dt.date, pairs: dict) -> dict:
    from jobs import build_index as job

    s = settings_mod.get()
    return job.run(day, str(Path(pairs["als_dir"]) / "full"),
                   exact_max=s.exact_index_max_items, seed=s.seed)


def precompute(day: dt.date, pairs: dict, extracted: dict, index: dict) -> dict:
    from jobs import precompute as job

    s = settings_mod.get()
    return job.run(day, str(Path(pairs["als_dir"]) / "full"), index["dir"], pairs["full"],
                   extracted["items"], top_k=s.top_k, similar_k=s.similar_k)


def evaluate(day: dt.date, pairs: dict, extracted: dict, index: dict, lists: dict,
             stats: dict) -> dict:
    from jobs import evaluate as job

    s = settings_mod.get()
    version = job.model_version(day, s.digest())
    artifacts = {"events": extracted["events"], "pairs": pairs["full"],
                 "als": pairs["als_dir"], "index": index["dir"], **lists,
                 "item_stats": stats["lists"]}
    return job.run(day, version=version,
                   eval_factors_dir=str(Path(pairs["als_dir"]) / "eval"), pairs=pairs,
                   extract=extracted, index_meta=index["meta"], artifacts=artifacts,
                   params=s.model_params(), digest=s.digest(), margin=s.gate_margin)


def publish(result: dict, pairs: dict, lists: dict, stats: dict) -> dict:
    from jobs import publish as job

    s = settings_mod.get()
    return job.run(result["version"], lists=lists, trending_path=stats["lists"],
                   popularity_path=stats["popularity"], pairs_path=pairs["full"],
                   keep=s.keep_versions)


def run_all(day: dt.date) -> dict:
    """The whole daily pipeline in this process (the DAG runs the same steps)."""
    ex = extract(day)
    pairs = prepare(day, ex)
    train_als_inline(pairs)
    stats = item_stats(day, ex)
    index = build_index(day, pairs)
    lists = precompute(day, pairs, ex, index)
    result = evaluate(day, pairs, ex, index, lists, stats)
    if result["passed"]:
        result["publish"] = publish(result, pairs, lists, stats)
    return result
