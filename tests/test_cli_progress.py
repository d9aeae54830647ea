"""`recs pipeline`'s progress lines and exit status.

The watcher runs against real Postgres: tables with the columns it reads of Airflow's
``dag_run`` and ``task_instance`` are created in the test database and changed while it
polls.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import subprocess
import time

import psycopg2
import pytest

from cli.main import pipeline_exit, summary_lines
from cli.progress import ChangeTracker, RunWatcher, TaskState, format_line

T0 = dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)
LOGICAL = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_format_line():
    assert format_line(12.3, "train_als", "running") == "  [  12.3s] train_als        running"
    assert format_line(55.0, "train_als", "success", 42.7) == \
        "  [  55.0s] train_als        success   42.7s"


def test_tracker_prints_each_change_once_in_time_order():
    tr = ChangeTracker()
    assert tr.events([TaskState("extract", None), TaskState("prepare", "scheduled")]) == []
    first = tr.events([TaskState("extract", "running", at(1))])
    assert [(e.task_id, e.state) for e in first] == [("extract", "running")]
    assert tr.events([TaskState("extract", "running", at(1))]) == []  # no change, no line
    # extract ends; gate starts and ends between two polls; publish is skipped.
    ev = tr.events([TaskState("extract", "success", at(1), at(5)),
                    TaskState("gate", "success", at(6), at(6.5)),
                    TaskState("publish", "skipped", at(7), at(7))])
    assert [(e.task_id, e.state, e.seconds) for e in ev] == [
        ("extract", "success", 4.0), ("gate", "running", None), ("gate", "success", 0.5),
        ("publish", "skipped", 0.0)]
    # A retry: its end, then a new start, each once.
    assert [e.state for e in tr.events([TaskState("prepare", "up_for_retry", at(8),
                                                  at(9))])] == ["running", "up_for_retry"]
    assert tr.events([TaskState("prepare", "scheduled", at(8), at(9))]) == []
    assert [e.state for e in tr.events([TaskState("prepare", "running", at(20))])] == [
        "running"]
    ev = tr.events([TaskState("prepare", "failed", at(20), at(21)),
                    TaskState("train_als", "upstream_failed", None, None)])
    assert [(e.task_id, e.state) for e in ev] == [("prepare", "failed"),
                                                  ("train_als", "upstream_failed")]
    assert tr.failed() == ["prepare", "train_als"]


def sql(dsn: str, query: str, params=()) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
    conn.close()


@pytest.fixture
def airflow_tables(dsn):
    """``dag_run`` and ``task_instance`` with the columns the watcher reads; an earlier
    run of the same logical date whose tasks must never be reported."""
    sql(dsn, """CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text, run_id text,
                                      logical_date timestamptz, run_after timestamptz);
                CREATE TABLE task_instance (dag_id text, run_id text, task_id text,
                                            state varchar(20), start_date timestamptz,
                                            end_date timestamptz)""")
    sql(dsn, "INSERT INTO dag_run (dag_id, run_id, logical_date, run_after) VALUES "
             "('daily', 'old', %s, %s), ('other', 'new-other', %s, %s)",
        (LOGICAL, T0 - dt.timedelta(hours=1), LOGICAL, T0 + dt.timedelta(seconds=1)))
    sql(dsn, "INSERT INTO task_instance VALUES ('daily', 'old', 'extract', 'success', %s, %s)",
        (at(-3000), at(-2990)))
    return dsn


def wait_for(out: io.StringIO, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, f"{text!r} not printed:\n{out.getvalue()}"
        time.sleep(0.02)
    return out.getvalue()


def test_watcher_prints_the_run_tasks_from_postgres(airflow_tables, caplog):
    caplog.set_level(logging.DEBUG, logger="recs.progress")
    dsn, out = airflow_tables, io.StringIO()
    watcher = RunWatcher(dsn, "daily", started=T0, logical_date=LOGICAL, interval=0.05,
                         out=out)
    with watcher:
        time.sleep(0.2)  # polls before the run exists: nothing printed, nothing raised
        sql(dsn, "INSERT INTO dag_run (dag_id, run_id, logical_date, run_after) "
                 "VALUES ('daily', 'new', %s, %s)", (LOGICAL, at(0.5)))
        sql(dsn, "INSERT INTO task_instance VALUES ('daily', 'new', 'extract', 'running', "
                 "%s, NULL), ('daily', 'new', 'prepare', NULL, NULL, NULL)", (at(1),))
        wait_for(out, "extract          running")
        sql(dsn, "UPDATE task_instance SET state = 'success', end_date = %s "
                 "WHERE run_id = 'new' AND task_id = 'extract'", (at(13.5),))
        wait_for(out, "success")
        # A failing query (the table gone for a while) is ignored; polling goes on.
        sql(dsn, "ALTER TABLE task_instance RENAME TO ti_away")
        time.sleep(0.2)
        sql(dsn, "ALTER TABLE ti_away RENAME TO task_instance")
        sql(dsn, "UPDATE task_instance SET state = 'running', start_date = %s "
                 "WHERE run_id = 'new' AND task_id = 'prepare'", (at(14),))
        wait_for(out, "prepare          running")
        # The last change before the run ends is printed by the final poll.
        sql(dsn, "UPDATE task_instance SET state = 'failed', end_date = %s "
                 "WHERE run_id = 'new' AND task_id = 'prepare'", (at(20),))
    assert out.getvalue().splitlines() == [
        "  [   1.0s] extract          running",
        "  [  13.5s] extract          success   12.5s",
        "  [  14.0s] prepare          running",
        "  [  20.0s] prepare          failed    6.0s",
    ]
    assert watcher.tracker.failed() == ["prepare"]
    assert any("poll failed" in r.getMessage() and "task_instance" in r.getMessage()
               for r in caplog.records), "the failing poll was not seen"


def test_watcher_with_an_unreachable_database_prints_nothing_and_never_raises():
    out = io.StringIO()
    with RunWatcher("postgresql://nobody@127.0.0.1:9/none", "daily", started=T0,
                    logical_date=LOGICAL, interval=0.05, out=out):
        time.sleep(0.2)
    assert out.getvalue() == ""


def result(status, message="", metrics=None, failure=None) -> dict:
    return {"day": dt.date(2026, 1, 1), "version": "v20260101-abcdef12", "status": status,
            "message": message, "metrics": metrics or {}, "failure": failure,
            "seconds": 12.0}


def test_exit_status_published_rejected_missing_failed():
    assert pipeline_exit(result("published", "beats popularity")) == (0, None)
    code, line = pipeline_exit(result("rejected", "NDCG@10 0.10 not above 0.12"))
    assert code == 3
    assert "nothing was published" in line and "NDCG@10 0.10 not above 0.12" in line
    assert "v20260101-abcdef12" in line
    code, line = pipeline_exit(result(None))
    assert code == 1 and "no model run" in line
    code, line = pipeline_exit(result("evaluated", "passed"))
    assert code == 1 and "evaluated" in line
    code, line = pipeline_exit(result(None, failure="`airflow dags test daily 2026-01-02` "
                                                    "exited with status 1"))
    assert code == 1 and "exited with status 1" in line and "failed" in line


def test_summary_names_the_published_model_only_when_recorded():
    base = {"full_pipeline": {"ndcg@10": 0.43, "precision@10": 0.38}}
    lines = summary_lines(result("published", "ok", base))
    assert lines[0] == "v20260101-abcdef12: published - ok in 12.0s"
    assert "full_pipeline" in lines[1] and "0.4300" in lines[1]
    assert not any("published model" in line for line in lines)
    model = {"name": "full_pipeline", "ndcg@10": 0.43, "reason": "beats popularity"}
    lines = summary_lines(result("published", "ok", {**base, "published_model": model}))
    assert lines[-1] == "published model: full_pipeline (NDCG@10 0.4300): beats popularity"
    lines = summary_lines(result("rejected", "no", {**base, "published_model": model}))
    assert lines[-1].startswith("model the gate judged (not published): full_pipeline")
    assert summary_lines(result(None)) == []


@pytest.mark.parametrize("rc", [1, 0])
def test_run_daily_reports_a_failed_airflow_run_and_a_missing_model_run(settings, monkeypatch,
                                                                        rc):
    """Through Airflow (faked: exit status ``rc``); the watcher finds no run, harmlessly."""
    from cli import main as cli_main

    def fake_airflow(s, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(["airflow", *argv], rc)

    monkeypatch.setattr(cli_main, "airflow_db_ready", lambda s: None)
    monkeypatch.setattr(cli_main, "airflow", fake_airflow)
    out = cli_main.run_daily(settings, dt.date(2026, 1, 1))
    code, line = pipeline_exit(out)
    assert code == 1
    if rc:
        assert out["failure"] == "`airflow dags test daily 2026-01-02` exited with status 1"
        assert "failed" in line
    else:
        assert out["failure"] is None and out["status"] is None and "no model run" in line
