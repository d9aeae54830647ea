"""The nearline and hourly DAGs: no import errors, the exact task graph, the policy
(tags, catch-up, retries, schedule and its setting), and one real run of each through
``airflow dags test`` against a published version."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from tests.dagparse import parse
from tests.test_nearline import make_live, post_events, sql

pytestmark = pytest.mark.airflow

AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    """A published version on a fresh database (tests/test_nearline.py:make_live)."""
    yield from make_live(dsn, tmp_path, monkeypatch)

@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    return parse(tmp_path_factory.mktemp("parse"))


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}
    assert {"daily", "nearline", "hourly"} <= set(parsed["dags"])


def test_task_graphs_are_exact(parsed):
    for dag_id, task in (("nearline", "fold_in_users"), ("hourly", "refresh_new_items")):
        tasks = parsed["dags"][dag_id]["tasks"]
        assert {t: v["downstream"] for t, v in tasks.items()} == {task: []}


def test_policy(parsed):
    for dag_id in ("nearline", "hourly"):
        dag = parsed["dags"][dag_id]
        assert dag["tags"] == sorted(["recs", dag_id])
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        for t in dag["tasks"].values():
            assert t["retries"] == 2 and t["timeout"] is not None
    near, hourly = parsed["dags"]["nearline"], parsed["dags"]["hourly"]
    assert near["timetable"] == "DeltaDataIntervalTimetable"
    assert near["timetable_args"]["delta"] == 300  # 5 minutes by default
    assert hourly["timetable"] == "CronDataIntervalTimetable"
    assert hourly["timetable_args"]["expression"] == "0 * * * *"


def test_schedule_settings(tmp_path):
    out = parse(tmp_path, RECS_NEARLINE_EVERY_MINUTES="2", RECS_HOURLY_CRON="30 * * * *")
    assert out["errors"] == {}
    assert out["dags"]["nearline"]["timetable_args"]["delta"] == 120
    assert out["dags"]["hourly"]["timetable_args"]["expression"] == "30 * * * *"
    bad = parse(tmp_path, RECS_NEARLINE_EVERY_MINUTES="often")
    (err,) = [v for k, v in bad["errors"].items() if k.endswith("nearline.py")]
    assert "RECS_NEARLINE_EVERY_MINUTES='often'" in err


@pytest.mark.slow
def test_one_run_of_each_through_airflow(live, tmp_path):
    """`airflow dags test` runs the real tasks against the published version: the events
    posted before it reach the user's list, a new item reaches similar lists."""
    dsn, version = live["dsn"], live["version"]
    home = tmp_path / "airflow"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
               RECS_DATABASE_URL=dsn, RECS_HOME=os.environ["RECS_HOME"],
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))

    def airflow(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True,
                           timeout=600, cwd=PROJECT_ROOT)
        assert r.returncode == 0, f"airflow {args}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    airflow("db", "migrate")
    user = sql(dsn, "SELECT min(user_id) FROM recommendations")[0][0]
    before = sql(dsn, "SELECT items FROM recommendations WHERE user_id = %s", (user,))[0][0]
    post_events(dsn, [(user, i, "purchase") for i in before[:3]])
    sql(dsn, "INSERT INTO items (item_id, title, category, tags) "
             "SELECT 900100, title || ' Again', category, tags FROM items WHERE item_id = 3")
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    airflow("dags", "test", "nearline", now.isoformat())
    after = sql(dsn, "SELECT items FROM recommendations WHERE user_id = %s", (user,))[0][0]
    assert not set(before[:3]) & set(after)
    value, wm_version = sql(dsn, "SELECT value, model_version FROM pipeline_watermarks "
                                 "WHERE name = 'nearline'")[0]
    assert wm_version == version and value <= now

    # The interval [h, h+1) that ends after the item was added.
    next_hour = (now + dt.timedelta(hours=1)).replace(minute=0)
    airflow("dags", "test", "hourly", next_hour.isoformat())
    assert sql(dsn, "SELECT count(*) FROM live_similar_items WHERE item_id = 900100")[0][0] > 0
    assert sql(dsn, "SELECT value FROM pipeline_watermarks WHERE name = 'hourly'")[0][0] <= \
        next_hour
