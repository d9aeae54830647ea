"""Extract the interaction window and the catalog for one logical date to the lake.

Reads events with ``timestamp < data_end`` (and ``>= data_end - window_days`` when a
window is set) in a stable order and writes them, with the item catalog and the users'
countries, as Parquet under ``events/``, ``items/`` and ``users/dt=<date>/``.
A re-run replaces that date only.
"""

from __future__ import annotations

import datetime as dt
import logging
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


def window(data_end: dt.datetime, window_days: int) -> tuple[dt.datetime | None, dt.datetime]:
    start = data_end - dt.timedelta(days=window_days) if window_days else None
    return start, data_end


def _dump(cur, sql: str, params, schema: pa.Schema, path: Path) -> int:
    cur.execute(sql, params)
    return lake.write_cursor(cur, schema, path, CHUNK, progress=lambda n: log.info(
        "extract %s: %d rows", path.name, n))


def run(day: dt.date, *, dsn: str | None = None, lake_root: Path | None = None,
        window_days: int | None = None, ahead_days: int = 7) -> dict:
    """Extract the window ending at the end of ``day``; return paths and counts."""
    s = settings_mod.get()
    window_days = s.window_days if window_days is None else window_days
    data_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    start, end = window(data_end, window_days)
    events_dir = lake.partition("events", day, lake_root)
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
        with conn.cursor(name="extract_events") as cur, lake.atomic_dir(events_dir) as tmp:
            cur.itersize = CHUNK
            sql = ('SELECT event_id, user_id, item_id, event_type, rating, "timestamp" '
                   'FROM interactions WHERE "timestamp" < %s'
                   + (' AND "timestamp" >= %s' if start else "")
                   + ' ORDER BY user_id, item_id, "timestamp", event_id')
            params = (end, start) if start else (end,)
            n_events = _dump(cur, sql, params, EVENT_SCHEMA, tmp / "events.parquet")
        conn.commit()
        with conn.cursor(name="extract_items") as cur, lake.atomic_dir(items_dir) as tmp:
            n_items = _dump(cur, "SELECT item_id, title, category, tags, created_at FROM items "
                                 "WHERE created_at < %s ORDER BY item_id", (end,),
                            ITEM_SCHEMA, tmp / "items.parquet")
        conn.commit()
        with conn.cursor(name="extract_users") as cur, lake.atomic_dir(users_dir) as tmp:
            _dump(cur, "SELECT user_id, country, preferences::text FROM users ORDER BY user_id", (),
                  USER_SCHEMA, tmp / "users.parquet")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute('SELECT min("timestamp"), max("timestamp") FROM interactions '
                        'WHERE "timestamp" < %s' + (' AND "timestamp" >= %s' if start else ""),
                        (end, start) if start else (end,))
            first, last = cur.fetchone()
    finally:
        conn.close()
    log.info("extracted %d events, %d items for %s in %.1fs", n_events, n_items, day,
             time.perf_counter() - t0)
    return {
        "day": day.isoformat(),
        "events": str(events_dir / "events.parquet"),
        "items": str(items_dir / "items.parquet"),
        "users": str(users_dir / "users.parquet"),
        "n_events": n_events, "n_items": n_items,
        "data_from": first.isoformat() if first else None,
        "data_until": last.isoformat() if last else None,
        "data_end": end.isoformat(),
    }
