"""Hourly: new and changed items reach similar lists, "New in" pools and users' lists.

Wiring only: the step is ``jobs/hourly.py:run``, called with the end of the run's data
interval. Items changed since the ``hourly`` watermark get MiniLM text embeddings and
join the text index; new items without ALS factors get similar lists and are inserted
into their nearest items' lists; the "New in <category>" pools refresh; a Thompson
sampling bandit gives active users one new item of their categories. No ALS retrain.

Schedule: ``RECS_HOURLY_CRON`` (default ``0 * * * *``), read when the file is parsed;
``catchup=False`` (a late run takes every item changed since the watermark).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

CRON = os.environ.get("RECS_HOURLY_CRON", "") or "0 * * * *"


@dag(
    dag_id="hourly",
    schedule=CronDataIntervalTimetable(CRON, timezone="UTC"),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(minutes=55),
    tags=["recs", "hourly"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2), "owner": "recs",
                  "execution_timeout": dt.timedelta(minutes=50)},
    doc_md=__doc__,
)
def hourly():
    @task
    def refresh_new_items() -> dict:
        from jobs import hourly as job

        return job.run(get_current_context()["data_interval_end"],
                       params=job.params_from_settings())

    refresh_new_items()


hourly()
