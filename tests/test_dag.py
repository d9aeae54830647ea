"""DAG tests: no import errors, the exact task graph, and the policy (tags, retries)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.settings import PROJECT_ROOT
from tests.dagparse import parse

pytestmark = pytest.mark.airflow

EXPECTED_EDGES = {
    "extract": {"prepare", "item_stats", "text_embeddings", "train_two_tower", "evaluate",
                "precompute"},
    "prepare": {"train_als", "covisit", "build_index", "train_two_tower", "evaluate",
                "precompute", "publish"},
    "train_als": {"build_index", "evaluate"},
    "covisit": {"evaluate"},
    "text_embeddings": {"train_two_tower", "evaluate", "precompute"},
    "train_two_tower": {"evaluate", "precompute"},
    "item_stats": {"evaluate", "publish"},
    "build_index": {"evaluate", "precompute"},
    # The gate's choice (evaluate) decides what precompute builds; nothing is built for a
    # rejected version (gate short-circuits precompute and publish).
    "evaluate": {"gate", "precompute", "publish"},
    "gate": {"precompute"},
    "precompute": {"publish"},
    # The precompute variants of running experiments, for the version just published.
    "publish": {"variants"},
    "variants": set(),
}

@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    return parse(tmp_path_factory.mktemp("parse"))


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}
    assert "daily" in parsed["dags"]


def test_daily_task_graph_is_exact(parsed):
    tasks = parsed["dags"]["daily"]["tasks"]
    assert {t: set(v["downstream"]) for t, v in tasks.items()} == EXPECTED_EDGES


def test_daily_policy(parsed):
    dag = parsed["dags"]["daily"]
    assert dag["tags"] == ["daily", "recs"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert all(t["retries"] == 2 for t in dag["tasks"].values())
    for spark_task in ("train_als", "covisit"):
        task = dag["tasks"][spark_task]
        assert task["type"] == "SparkSubmitOperator" and task["conn_id"] == "spark_default"


def test_dag_files_keep_heavy_imports_inside_tasks():
    for path in (PROJECT_ROOT / "dags").glob("*.py"):
        top = [line for line in path.read_text().splitlines()
               if line.startswith(("import ", "from "))]
        for heavy in ("pyspark", "torch", "faiss", "pandas", "numpy", "psycopg2"):
            assert not any(heavy in line for line in top), f"{path.name}: {heavy} at top level"


def test_spark_connection_takes_the_master_from_settings(tmp_path):
    """The Spark provider resolves the master from the connection that `recs` sets."""
    from cli.airflow_env import environ
    from core import settings as settings_mod

    s = settings_mod.load(env={}, home=tmp_path, spark_master="local[2]")
    env = environ(s, base={"PATH": os.environ["PATH"]})
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path}/a.db"
    code = ("from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook\n"
            "print('MASTER=' + SparkSubmitHook(conn_id='spark_default')._connection['master'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert "MASTER=local[2]" in r.stdout, r.stderr[-2000:]


def test_maintenance_policy(parsed):
    """The partition maintenance (jobs/maintenance.py) runs hourly, no catch-up."""
    dag = parsed["dags"]["maintenance"]
    assert set(dag["tasks"]) == {"maintain_partitions"}
    assert dag["tags"] == ["maintenance", "recs"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["timetable_args"]["expression"] == "15 * * * *"
    assert all(t["retries"] == 2 for t in dag["tasks"].values())
