"""Maintenance: the partitions of ``interactions`` (created ahead, the DEFAULT partition
emptied, retention).

Wiring only: the step is ``jobs/maintenance.py:run``. Day partitions are created
``RECS_PARTITIONS_AHEAD_DAYS`` ahead, rows that landed in ``interactions_default`` move
into day partitions, and, only when ``RECS_RETENTION_DAYS`` is above 0, partitions wholly
older than that are exported to the lake as Parquet and then dropped.

Schedule: ``RECS_MAINTENANCE_CRON`` (default ``15 * * * *``, hourly), read when the file
is parsed; ``catchup=False`` (each run looks at the present, not at its interval).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import CronDataIntervalTimetable, dag, task

CRON = os.environ.get("RECS_MAINTENANCE_CRON", "") or "15 * * * *"


@dag(
    dag_id="maintenance",
    schedule=CronDataIntervalTimetable(CRON, timezone="UTC"),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(minutes=55),
    tags=["maintenance", "recs"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2), "owner": "recs",
                  "execution_timeout": dt.timedelta(minutes=50)},
    doc_md=__doc__,
)
def maintenance():
    @task
    def maintain_partitions() -> dict:
        from jobs import maintenance as job

        return job.run()

    maintain_partitions()


maintenance()
