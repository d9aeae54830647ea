"""Progress of a DAG run, read from Airflow's metadata database while the run executes.

``RunWatcher`` polls the ``task_instance`` rows of one run of a DAG about once a second
from a thread and prints one line when a task starts and one when it ends (state and
duration), each state change once, with the time elapsed since the command started::

      [  12.3s] train_als        running
      [  55.0s] train_als        success   42.7s

Watching never makes the command fail: a query error is logged at debug level and the
next poll tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import psycopg2

log = logging.getLogger("recs.progress")

# States that say nothing about progress yet (Airflow sets them just before running).
QUIET_STATES = frozenset({None, "none", "scheduled", "queued"})
# Terminal states of a task that really ran: its line is preceded by a start line.
RAN_STATES = frozenset({"success", "failed", "up_for_retry", "up_for_reschedule"})

RUN_QUERY = """SELECT run_id FROM dag_run
               WHERE dag_id = %s AND logical_date = %s AND run_after >= %s
               ORDER BY id DESC LIMIT 1"""
TASKS_QUERY = """SELECT task_id, state, start_date, end_date FROM task_instance
                 WHERE dag_id = %s AND run_id = %s"""


@dataclass(frozen=True)
class TaskState:
    """One task instance row: the columns progress needs."""

    task_id: str
    state: str | None
    start_date: dt.datetime | None = None
    end_date: dt.datetime | None = None

    def seconds(self) -> float | None:
        """Run time, when the task has ended and both times are known."""
        if self.state == "running" or self.start_date is None or self.end_date is None:
            return None
        return max(0.0, (self.end_date - self.start_date).total_seconds())


def format_line(elapsed: float, task_id: str, state: str, seconds: float | None = None) -> str:
    """``  [  55.0s] train_als        success   42.7s`` (no duration: state only)."""
    head = f"  [{elapsed:6.1f}s] {task_id:<16} "
    if seconds is None:
        return head + state
    return f"{head}{state:<9} {seconds:.1f}s"


@dataclass(frozen=True)
class Event:
    """A line to print: when it happened and what."""

    at: dt.datetime | None
    task_id: str
    state: str
    seconds: float | None = None


class ChangeTracker:
    """Turns successive snapshots of a run's tasks into start and end events, once each."""

    def __init__(self) -> None:
        self.printed: dict[str, str] = {}

    def events(self, rows: Iterable[TaskState]) -> list[Event]:
        """Events for the state changes since the previous snapshot, in time order."""
        out: list[Event] = []
        for row in rows:
            out += self._row_events(row)
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        return sorted(out, key=lambda e: (e.at or far, e.state != "running", e.task_id))

    def _row_events(self, row: TaskState) -> list[Event]:
        last = self.printed.get(row.task_id)
        if row.state in QUIET_STATES or row.state == last:
            return []
        self.printed[row.task_id] = row.state
        if row.state == "running":
            return [Event(row.start_date, row.task_id, "running")]
        events = []
        if row.state in RAN_STATES and last != "running" and row.start_date is not None:
            # Started and ended between two polls: its start line still comes first.
            events.append(Event(row.start_date, row.task_id, "running"))
        events.append(Event(row.end_date, row.task_id, row.state, row.seconds()))
        return events

    def failed(self) -> list[str]:
        """Tasks whose last printed state is failed or upstream_failed."""
        return sorted(t for t, s in self.printed.items() if s in ("failed", "upstream_failed"))


class RunWatcher:
    """Prints the task state changes of one DAG run while it executes.

    The run is ``run_id`` when given, otherwise the newest run of ``dag_id`` with
    ``logical_date`` created at or after ``started`` (so an earlier run of the same
    date is never reported). Use as a context manager around the run.
    """

    def __init__(self, dsn: str, dag_id: str, *, started: dt.datetime,
                 logical_date: dt.datetime | None = None, run_id: str | None = None,
                 interval: float = 1.0, out: TextIO | None = None) -> None:
        self.dsn, self.dag_id, self.started = dsn, dag_id, started
        self.logical_date, self.run_id, self.interval = logical_date, run_id, interval
        self.out = out
        self.tracker = ChangeTracker()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recs-progress", daemon=True)
        self._conn = None

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop polling, then poll once more so that the last tasks' ends are printed."""
        self._stop.set()
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            self.poll_once()
            self._close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def poll_once(self) -> None:
        """Read the run's tasks and print what changed; any error is ignored."""
        try:
            for event in self.tracker.events(self._fetch()):
                self._print(event)
        except Exception as exc:  # never let watching fail the run
            log.debug("progress poll failed (ignored): %s", exc)
            self._close()

    def _fetch(self) -> list[TaskState]:
        conn = self._connect()
        with conn.cursor() as cur:
            if self.run_id is None:
                cur.execute(RUN_QUERY, (self.dag_id, self.logical_date, self.started))
                row = cur.fetchone()
                if row is None:
                    return []
                self.run_id = row[0]
            cur.execute(TASKS_QUERY, (self.dag_id, self.run_id))
            return [TaskState(*r) for r in cur.fetchall()]

    def _connect(self):
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.dsn, connect_timeout=3,
                                          options="-c statement_timeout=5000")
            self._conn.autocommit = True
        return self._conn

    def _close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # closing a broken connection
            pass
        self._conn = None

    def _print(self, e: Event) -> None:
        at = e.at or dt.datetime.now(dt.UTC)
        elapsed = max(0.0, (at - self.started).total_seconds())
        out = self.out or sys.stdout
        print(format_line(elapsed, e.task_id, e.state, e.seconds), file=out, flush=True)
