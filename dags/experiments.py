"""Experiments: the daily analysis of every running or recently stopped experiment.

Wiring only: ``due`` lists the experiments to analyse for the run's day
(``jobs/experiment_analysis.py:experiments_for``), and ``analyse`` runs once per
experiment (a mapped task, so one failing experiment does not hold back the others):
results and the decision into ``experiment_results`` / ``experiment_decisions`` (a re-run
of a day replaces that day), the plot under ``<lake>/experiments/<key>/dt=<day>/``.

The day is the one the run's data interval starts in (the day that ended before the
run), so backfills re-analyse past days. Schedule: ``RECS_EXPERIMENTS_CRON`` (default
``30 1 * * *``), read when the file is parsed.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

CRON = os.environ.get("RECS_EXPERIMENTS_CRON", "") or "30 1 * * *"


def _day() -> dt.date:
    """The day the run's interval starts in (the default interval is [D 01:30, D+1 01:30):
    day D, complete when the run starts)."""
    return get_current_context()["data_interval_start"].astimezone(dt.UTC).date()


@dag(
    dag_id="experiments",
    schedule=CronDataIntervalTimetable(CRON, timezone="UTC"),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=2),
    tags=["experiments", "recs"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5), "owner": "recs",
                  "execution_timeout": dt.timedelta(minutes=60)},
    doc_md=__doc__,
)
def experiments():
    @task
    def due() -> list[str]:
        from core import settings as settings_mod
        from jobs import experiment_analysis as job

        return job.experiments_for(settings_mod.get().dsn, _day())

    @task
    def analyse(key: str) -> dict:
        from core import settings as settings_mod
        from jobs import experiment_analysis as job

        return job.run_one(settings_mod.get().dsn, key, _day())

    analyse.expand(key=due())


experiments()
