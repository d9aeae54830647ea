"""Nearline: users with new events get their lists recomputed in the live version.

Wiring only: the step is ``jobs/nearline.py:run``, called with the end of the run's data
interval. It folds the vectors of users whose events arrived since the ``nearline``
watermark in against the live version's fixed ALS item factors, re-scores their
candidates and replaces their lists; the watermark advances in the same transaction, so a
failed run leaves the old lists and the next run reads the same events.

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
