"""The exposure log: every list the reader serves, written off the request path.

A request puts one :class:`Exposure` on a bounded in-process queue (``put`` never waits:
when the queue is full the row is dropped and counted). A background thread gathers rows
until it has ``batch`` of them or ``flush_s`` seconds have passed since the first, and
writes them with one ``COPY exposures FROM STDIN`` on its own connection (the reader's
role, which may only INSERT into ``exposures``: sql/012_experiments.sql), so logging
never takes a connection from the reads' pool. A batch that cannot be written (database
down, a bad row) is dropped and counted; the thread backs off and goes on.

Counters (serve/metrics.py), ``recs_exposures_total{outcome}``: ``served`` (rows put),
``logged`` (rows committed), ``dropped`` (queue full, or a batch that failed). Once the
queue is drained ``served == logged + dropped``. :func:`close_all` drains and stops every
log of the process: gunicorn's ``worker_exit`` hook (serve/gunicorn.conf.py) and
``atexit`` call it, so a worker that exits normally loses nothing it accepted.
"""

from __future__ import annotations

import atexit
import datetime as dt
import io
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2

from serve.metrics import Metrics

log = logging.getLogger(__name__)

COLUMNS = ("request_id", "served_at", "user_id", "endpoint", "experiment_key", "variant",
           "model_version", "items", "propensities", "teams")
COPY_SQL = f"COPY exposures ({', '.join(COLUMNS)}) FROM STDIN"
CONNECT_TIMEOUT_S = 2
# After a failed write, wait this long before the next (rows keep queueing meanwhile).
RETRY_S = 1.0
# The writer thread looks at its stop flag at least this often.
POLL_S = 0.1
METRIC = "recs_exposures_total"


@dataclass(frozen=True)
class Exposure:
    """One served list: ``propensities`` and ``teams`` are parallel to ``items`` (or
    None); ``endpoint`` is the list's type (``personalized``, ``similar``, ``trending``)."""

    request_id: str
    served_at: dt.datetime
    user_id: int
    endpoint: str
    experiment_key: str | None
    variant: str | None
    model_version: str | None
    items: tuple[int, ...]
    propensities: tuple[float, ...] | None = None
    teams: tuple[int, ...] | None = None


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _array(values: Sequence | None, fmt=str) -> str:
    if values is None:
        return "\\N"
    return "{" + ",".join(fmt(v) for v in values) + "}"


def copy_line(e: Exposure) -> str:
    """``e`` as a line of COPY's text format."""
    return "\t".join((
        e.request_id, e.served_at.isoformat(), str(int(e.user_id)), _text(e.endpoint),
        _text(e.experiment_key), _text(e.variant), _text(e.model_version),
        _array(e.items, lambda v: str(int(v))),
        _array(e.propensities, lambda v: repr(float(v))),
        _array(e.teams, lambda v: str(int(v))),
    )) + "\n"


class ExposureLog:
    """A bounded queue of exposures and the thread that copies them into ``exposures``."""

    def __init__(self, dsn: str, metrics: Metrics, maxsize: int = 10_000, batch: int = 1000,
                 flush_s: float = 0.5) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.batch = batch
        self.flush_s = flush_s
        # COPY lines: formatted by the request (~15 us), so that the writer thread never
        # holds the GIL for a whole batch's formatting (milliseconds: a p99 matter).
        self.queue: queue.Queue[str] = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._pending = 0  # queued or being written

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="recs-exposures",
                                            daemon=True)
            self._thread.start()
            _open.append(self)
            _register_exit()

    def put(self, exposure: Exposure) -> bool:
        """Queue ``exposure`` without waiting; False (and counted) when it was dropped."""
        self.metrics.inc(METRIC, outcome="served")
        line = copy_line(exposure)
        try:
            with self._count_lock:
                self.queue.put_nowait(line)
                self._pending += 1
            return True
        except queue.Full:
            self.metrics.inc(METRIC, outcome="dropped")
            return False

    def _take(self, wait_s: float) -> list[str]:
        """Up to ``batch`` rows: the first within ``wait_s``, then more until the batch is
        full or ``wait_s`` has passed since the first (sooner when stopping)."""
        rows: list[str] = []
        try:
            rows.append(self.queue.get(timeout=min(wait_s, POLL_S)) if wait_s > 0
                        else self.queue.get_nowait())
        except queue.Empty:
            return rows
        deadline = time.monotonic() + wait_s
        while len(rows) < self.batch:
            try:
                rows.append(self.queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                break
            try:
                rows.append(self.queue.get(timeout=min(left, POLL_S)))
            except queue.Empty:
                continue
        return rows

    def _loop(self) -> None:
        while not self._stop.is_set():
            rows = self._take(self.flush_s)
            if rows and not self.write(rows):
                self._stop.wait(RETRY_S)

    def write(self, rows: list[str]) -> bool:
        """COPY ``rows`` in one transaction; on failure they are dropped and counted."""
        try:
            return self._write(rows)
        finally:
            with self._count_lock:
                self._pending -= len(rows)

    def _write(self, rows: list[str]) -> bool:
        with self._write_lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg2.connect(self.dsn, connect_timeout=CONNECT_TIMEOUT_S,
                                                  application_name="recs-serve-exposures")
                with self._conn, self._conn.cursor() as cur:
                    cur.copy_expert(COPY_SQL, io.StringIO("".join(rows)))
            except (psycopg2.Error, OSError) as exc:
                self.metrics.inc(METRIC, len(rows), outcome="dropped")
                log.warning("exposure batch of %d rows dropped: %s", len(rows),
                            str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except psycopg2.Error:
                        pass
                    self._conn = None
                return False
            self.metrics.inc(METRIC, len(rows), outcome="logged")
            return True

    def flush(self, timeout_s: float = 5.0) -> None:
        """Return once every row put so far is written or dropped (at most ``timeout_s``):
        rows still queued are written from this thread (shutdown, tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self._take(0)
            if rows:
                self.write(rows)
                continue
            with self._count_lock:
                if self._pending <= 0:
                    return
            time.sleep(0.005)  # the writer thread holds a batch: wait for it

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, then write what is left (at most ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush(timeout_s)
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        if self in _open:
            _open.remove(self)


_open: list[ExposureLog] = []


def close_all() -> None:
    """Drain and stop every exposure log of this process (worker exit, atexit)."""
    for exposure_log in list(_open):
        try:
            exposure_log.close()
        except Exception:  # shutting down: never raise from an exit hook
            log.exception("exposure log not flushed at exit")


_registered = False


def _register_exit() -> None:
    """``close_all`` at exit, registered after the metrics' own exit dump (atexit runs
    the last registered first), so the final counts include the last batch."""
    global _registered
    if not _registered:
        atexit.register(close_all)
        _registered = True
