"""Nearline: users with new events get their lists recomputed in the live version.

Wiring only: the step is ``jobs/nearline.py:run``, called with the end of the run's data
interval. It folds the vectors of users whose events arrived since the ``nearline``
watermark in against the live version's fixed ALS item factors, re-scores their
candidates and replaces their lists, ``RECS_NEARLINE_CHUNK_USERS`` users per transaction;
each chunk commits its lists with its progress in the watermark, so a failed or killed
run keeps the chunks it finished and the next run resumes after them. A run starts no
chunk after ``RECS_NEARLINE_BUDGET_S`` seconds (240), well inside the task's timeout: a
large catch-up (after a publish) goes on over the next runs instead of timing out whole.

Schedule: every ``RECS_NEARLINE_EVERY_MINUTES`` minutes (default 5), read when the file
is parsed. ``catchup=False`` and one active run: a run that starts late reads everything
since the watermark anyway, so missed intervals need no runs of their own.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DeltaDataIntervalTimetable, dag, get_current_context, task


def _minutes(var: str, default: int, lo: int = 1, hi: int = 1440) -> int:
    raw = os.environ.get(var, "") or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r}: expected a whole number of minutes") from None
    if not lo <= value <= hi:
        raise ValueError(f"{var}={value}: must be between {lo} and {hi}")
    return value


EVERY_MINUTES = _minutes("RECS_NEARLINE_EVERY_MINUTES", 5)


@dag(
    dag_id="nearline",
    schedule=DeltaDataIntervalTimetable(dt.timedelta(minutes=EVERY_MINUTES)),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(minutes=max(10, 2 * EVERY_MINUTES)),
    tags=["recs", "nearline"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(seconds=30), "owner": "recs",
                  "execution_timeout": dt.timedelta(minutes=max(10, 2 * EVERY_MINUTES))},
    doc_md=__doc__,
)
def nearline():
    @task
    def fold_in_users() -> dict:
        from jobs import nearline as job

        return job.run(get_current_context()["data_interval_end"])

    fold_in_users()


nearline()
