"""Extract the closed day's events and the catalog for one logical date to the lake.

Events are kept in the lake one folder per event day, ``event_days/day=<date>/``, each
written once when its day closes and never re-read from Postgres unless it changed:

* the run's own day is always extracted (a re-run of a date replaces it);
* a day that received events after the previous run's extraction (late events, found
  through ``ingested_at`` and its BRIN index, sql/010_incremental_extract.sql, so only
  the newest rows are looked at) is extracted again, whichever run finds them;
* the first run (no watermark yet) extracts every day before the run's end, once.

The run's window (``window_days``, 0: all history) is then the list of day files from the
lake, oldest first, each sorted by (user, item, time, event id): the daily cost of
extraction is the closed day, not the history. The item catalog and the users' countries
(small, and changing in place) are copied whole under ``items/`` and ``users/dt=<date>/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa

from core import db, lake
from core import settings as settings_mod
from jobs import maintenance

log = logging.getLogger("recs.extract")

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("user_id", pa.int64()), ("item_id", pa.int64()),
    ("event_type", pa.string()), ("rating", pa.float32()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
])
ITEM_SCHEMA = pa.schema([
    ("item_id", pa.int64()), ("title", pa.string()), ("category", pa.string()),
    ("tags", pa.list_(pa.string())), ("created_at", pa.timestamp("us", tz="UTC")),
])
USER_SCHEMA = pa.schema([("user_id", pa.int64()), ("country", pa.string()),
                         ("preferences", pa.string())])  # JSON text, e.g. onboarding
CHUNK = 200_000
# Events inserted by a transaction that was still open while a run extracted their day
# carry an ``ingested_at`` earlier than their commit: the next run looks back this far
# before its watermark for them.
LATE_COMMIT_MARGIN = dt.timedelta(hours=1)
EVENT_DAYS = "event_days"
EXTRACT_LOCK = "recs_extract"  # one extract at a time


def window(data_end: dt.datetime, window_days: int) -> tuple[dt.datetime | None, dt.datetime]:
    start = data_end - dt.timedelta(days=window_days) if window_days else None
    return start, data_end


def _dump(cur, sql: str, params, schema: pa.Schema, path: Path) -> int:
    cur.execute(sql, params)
    return lake.write_cursor(cur, schema, path, CHUNK, progress=lambda n: log.info(
        "extract %s: %d rows", path.name, n))


def day_dir(lake_root: Path | None, day: dt.date) -> Path:
    """The lake folder of the events of ``day``."""
    return (lake_root or lake.root()) / EVENT_DAYS / f"day={day.isoformat()}"


def _state_path(lake_root: Path | None) -> Path:
    return (lake_root or lake.root()) / EVENT_DAYS / "_state.json"


def _read_state(lake_root: Path | None) -> dict:
    path = _state_path(lake_root)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(lake_root: Path | None, state: dict) -> None:
    path = _state_path(lake_root)
    tmp = lake.atomic_file(path)
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def lake_days(lake_root: Path | None) -> list[dt.date]:
    """The event days present in the lake, oldest first."""
    base = (lake_root or lake.root()) / EVENT_DAYS
    if not base.exists():
        return []
    return sorted(dt.date.fromisoformat(p.name[4:]) for p in base.iterdir()
                  if p.is_dir() and p.name.startswith("day=")
                  and (p / "events.parquet").exists())


def days_to_extract(cur, day: dt.date, start: dt.datetime | None, end: dt.datetime,
                    state: dict, in_lake: list[dt.date],
                    late_margin: dt.timedelta = LATE_COMMIT_MARGIN) -> list[dt.date]:
    """The days this run must (re-)extract: its own; the days with events ingested since
    the watermark (less ``late_margin``) that are in the lake or not after
    ``day``; and the days of the window the lake has never covered (all of them on the
    first run: ``state['covered_from']`` is where earlier runs' scans began, None for
    the beginning of time)."""
    utc_day = """("timestamp" AT TIME ZONE 'UTC')::date"""
    days = {day}
    covered = state.get("covered_from", "never")
    if covered == "never" or (covered is not None and (
            start is None or start < dt.datetime.fromisoformat(covered))):
        upper = end if covered == "never" else dt.datetime.fromisoformat(covered)
        cur.execute(f'SELECT DISTINCT {utc_day} FROM interactions WHERE "timestamp" < %s'
                    + (' AND "timestamp" >= %s' if start else ""),
                    (upper, start) if start else (upper,))
        days |= {r[0] for r in cur.fetchall()}
    if state.get("watermark"):
        since = dt.datetime.fromisoformat(state["watermark"]) - late_margin
        cur.execute(f"SELECT DISTINCT {utc_day} FROM interactions WHERE ingested_at > %s",
                    (since,))
        lake_set = set(in_lake)
        days |= {d for (d,) in cur.fetchall() if d <= day or d in lake_set}
    return sorted(days)


def _extract_day(conn, d: dt.date, lake_root: Path | None) -> int:
    start = dt.datetime.combine(d, dt.time(), tzinfo=dt.UTC)
    with conn.cursor(name="extract_events") as cur, \
            lake.atomic_dir(day_dir(lake_root, d)) as tmp:
        cur.itersize = CHUNK
        n = _dump(cur, 'SELECT event_id, user_id, item_id, event_type, rating, "timestamp" '
                       'FROM interactions WHERE "timestamp" >= %s AND "timestamp" < %s '
                       'ORDER BY user_id, item_id, "timestamp", event_id',
                  (start, start + dt.timedelta(days=1)), EVENT_SCHEMA, tmp / "events.parquet")
    conn.commit()
    return n


def window_files(day: dt.date, window_days: int, lake_root: Path | None) -> list[str]:
    """The lake's event files of the window ending with ``day``, oldest first."""
    first = day - dt.timedelta(days=window_days - 1) if window_days else dt.date.min
    return [str(day_dir(lake_root, d) / "events.parquet") for d in lake_days(lake_root)
            if first <= d <= day]


def read_events(files: list[str], columns: list[str] | None = None):
    """The events of ``files`` (:func:`window_files`) as one frame, in file order."""
    import pyarrow.parquet as pq

    def read(f: str):
        # A concurrent extract may be swapping this day's folder (two renames): retry.
        for attempt in range(5):
            try:
                return pq.read_table(f, columns=columns)
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.2)

    tables = [read(f) for f in files]
    schema = EVENT_SCHEMA if columns is None else \
        pa.schema([EVENT_SCHEMA.field(c) for c in columns])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table.to_pandas()


def summary(files: list[str]) -> tuple[int, dt.datetime | None, dt.datetime | None]:
    """(rows, first, last timestamp) of event files, from their Parquet footers."""
    import pyarrow.parquet as pq

    n, first, last = 0, None, None
    for f in files:
        meta = pq.ParquetFile(f).metadata
        n += meta.num_rows
        col = meta.schema.names.index("timestamp")
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            if st is None or not st.has_min_max:
                continue
            first = st.min if first is None else min(first, st.min)
            last = st.max if last is None else max(last, st.max)
    return n, first, last


def run(day: dt.date, *, dsn: str | None = None, lake_root: Path | None = None,
        window_days: int | None = None, ahead_days: int = 7,
        late_margin: dt.timedelta = LATE_COMMIT_MARGIN) -> dict:
    """Extract what changed up to the end of ``day`` (see the module's docstring); return
    the window's event files, the catalog's paths and counts. ``late_margin``: how far
    before the watermark to look for late events (:data:`LATE_COMMIT_MARGIN`)."""
    s = settings_mod.get()
    window_days = s.window_days if window_days is None else window_days
    data_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    start, end = window(data_end, window_days)
    items_dir = lake.partition("items", day, lake_root)
    users_dir = lake.partition("users", day, lake_root)
    t0 = time.perf_counter()
    conn = db.connect(dsn)
    try:
        # Keep partitions ready ahead of the events that will arrive (the maintenance DAG
        # does too; events of a day without one wait in interactions_default, which this
        # read includes).
        try:
            maintenance.ensure_ahead(dsn, day, ahead_days)
        except maintenance.Busy as exc:
            log.warning("partitions ahead not created: %s", exc)
        # Runs of several dates (a backfill) extract one at a time: they share the day
        # folders and the watermark.
        with db.advisory_lock(conn, EXTRACT_LOCK):
            state = _read_state(lake_root)
            with conn.cursor() as cur:
                cur.execute("SELECT clock_timestamp()")
                run_start = cur.fetchone()[0]
                todo = days_to_extract(cur, day, start, end, state, lake_days(lake_root),
                                       late_margin)
            conn.commit()
            extracted = {}
            for i, d in enumerate(todo, start=1):
                extracted[d.isoformat()] = _extract_day(conn, d, lake_root)
                log.info("extract: day %s, %d events (%d/%d days)", d,
                         extracted[d.isoformat()], i, len(todo))
            # Only a run that finished every day it found may move the watermark and the
            # coverage.
            covered = state.get("covered_from", "never")
            if covered == "never" or (covered is not None and (
                    start is None or start < dt.datetime.fromisoformat(covered))):
                covered = start.isoformat() if start else None
            watermark = run_start if not state.get("watermark") else \
                max(run_start, dt.datetime.fromisoformat(state["watermark"]))
            _write_state(lake_root, {"watermark": watermark.isoformat(),
                                     "covered_from": covered})
        with conn.cursor(name="extract_items") as cur, lake.atomic_dir(items_dir) as tmp:
            n_items = _dump(cur, "SELECT item_id, title, category, tags, created_at FROM items "
                                 "WHERE created_at < %s ORDER BY item_id", (end,),
                            ITEM_SCHEMA, tmp / "items.parquet")
        conn.commit()
        with conn.cursor(name="extract_users") as cur, lake.atomic_dir(users_dir) as tmp:
            _dump(cur, "SELECT user_id, country, preferences::text FROM users ORDER BY user_id", (),
                  USER_SCHEMA, tmp / "users.parquet")
        conn.commit()
    finally:
        conn.close()
    files = window_files(day, window_days, lake_root)
    n_events, first, last = summary(files)
    log.info("extracted %d days (%d events) for %s in %.1fs; window: %d days, %d events",
             len(todo), sum(extracted.values()), day, time.perf_counter() - t0, len(files),
             n_events)
    return {
        "day": day.isoformat(),
        "events": files,
        "extracted_days": extracted,
        "items": str(items_dir / "items.parquet"),
        "users": str(users_dir / "users.parquet"),
        "n_events": n_events, "n_items": n_items,
        "data_from": first.isoformat() if first is not None else None,
        "data_until": last.isoformat() if last is not None else None,
        "data_end": end.isoformat(),
    }
