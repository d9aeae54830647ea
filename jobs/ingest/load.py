"""Bulk loads of MovieLens and synthetic data into Postgres, idempotent and all-or-nothing.

Each load runs in ONE transaction: rows are COPYed into TEMP staging tables, users and
items are upserted from there (items change only when title, category or tags differ),
and events go in with ``INSERT ... ON CONFLICT DO NOTHING`` after the partitions they
need exist. The ``loads`` table records ``(source, digest)``; an identical load later
is recognised and writes nothing, and stable event ids make a repeat harmless anyway.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg2.extensions

from core import db
from jobs.ingest import EVENT_COLUMNS, movielens
from jobs.ingest import synthetic as synthetic_mod
from jobs.ingest.synthetic import SyntheticConfig

log = logging.getLogger("recs.ingest")

MOVIELENS_SOURCE = "movielens"
SYNTHETIC_SOURCE = "synthetic"
STAGE_ROWS = 50_000  # rows per COPY into staging
_LOCK = "recs_load"

Cursor = psycopg2.extensions.cursor


@dataclass(frozen=True)
class LoadReport:
    """What one load did. ``users``: users inserted; ``items``: items inserted or changed;
    ``interactions``: events inserted (duplicates of stored events are not counted)."""

    source: str
    digest: str
    users: int = 0
    items: int = 0
    interactions: int = 0
    skipped: int = 0
    skipped_reasons: tuple[str, ...] = ()
    already_loaded: bool = False
    seconds: float = 0.0
    skipped_by_file: dict[str, int] = field(default_factory=dict)


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def load_movielens(path: Path | str, *, dsn: str | None = None, skip_bad: bool = False,
                   hot_days: int = 62) -> LoadReport:
    """Load a MovieLens folder (any supported layout) in one transaction.

    The whole input is validated first; a bad row raises
    :class:`~jobs.ingest.movielens.BadRowError` before anything is written, unless
    ``skip_bad`` (then bad rows are counted in the report).
    """
    _check_hot_days(hot_days)
    t0 = time.perf_counter()
    files = movielens.detect(path)
    digest = file_digest(files.inputs)
    if _recorded(dsn, MOVIELENS_SOURCE, digest):
        return _already(MOVIELENS_SOURCE, digest, t0)
    log.info("movielens %s (%s layout): validating", files.root, files.layout)
    data = movielens.read(files, skip_bad=skip_bad)
    if data.bad.total:
        log.warning("movielens: skipping %d bad rows %s", data.bad.total, data.bad.counts)
    days = None
    if data.min_ts is not None and data.max_ts is not None:
        days = (_day(data.min_ts), _day(data.max_ts))
    users = ((u, ts, None) for u, ts in data.users())
    counts = _write(dsn, MOVIELENS_SOURCE, digest, users=users, items=data.items(),
                    events=data.iter_events(STAGE_ROWS), days=days, hot_days=hot_days,
                    skipped=data.bad.total)
    if counts is None:
        return _already(MOVIELENS_SOURCE, digest, t0)
    return LoadReport(MOVIELENS_SOURCE, digest, *counts, skipped=data.bad.total,
                      skipped_reasons=data.bad.first_reasons(),
                      seconds=time.perf_counter() - t0, skipped_by_file=dict(data.bad.counts))


def load_synthetic(config: SyntheticConfig, *, dsn: str | None = None,
                   hot_days: int = 62) -> LoadReport:
    """Generate and load a synthetic dataset in one transaction, streaming the events."""
    _check_hot_days(hot_days)
    t0 = time.perf_counter()
    digest = config.digest()
    if _recorded(dsn, SYNTHETIC_SOURCE, digest):
        return _already(SYNTHETIC_SOURCE, digest, t0)
    items = synthetic_mod.generate_items(config)
    users = synthetic_mod.generate_users(config)
    item_rows = zip(items["item_id"].tolist(), items["title"], items["category"],
                    (list(t) for t in items["tags"]), items["created_ts"].tolist(), strict=True)
    user_rows = zip(users["user_id"].tolist(), users["created_ts"].tolist(), users["country"],
                    strict=True)
    events = synthetic_mod.iter_events(config, STAGE_ROWS, items=items, users=users)
    days = (config.first_day, config.last_day) if config.n_events else None
    counts = _write(dsn, SYNTHETIC_SOURCE, digest, users=user_rows, items=item_rows,
                    events=events, days=days, hot_days=hot_days, skipped=0)
    if counts is None:
        return _already(SYNTHETIC_SOURCE, digest, t0)
    return LoadReport(SYNTHETIC_SOURCE, digest, *counts, seconds=time.perf_counter() - t0)


# --- Internals -----------------------------------------------------------------------------


def _check_hot_days(hot_days: int) -> None:
    if isinstance(hot_days, bool) or not isinstance(hot_days, int) or hot_days < 0:
        raise ValueError(f"hot_days={hot_days!r}: expected a non-negative integer")


def _day(ts: int) -> date:
    return datetime.fromtimestamp(ts, tz=UTC).date()


def _already(source: str, digest: str, t0: float) -> LoadReport:
    log.info("%s %s: already loaded, nothing to do", source, digest[:12])
    return LoadReport(source, digest, already_loaded=True, seconds=time.perf_counter() - t0)


def _recorded(dsn: str | None, source: str, digest: str, cur: Cursor | None = None) -> bool:
    sql = "SELECT 1 FROM loads WHERE source = %s AND digest = %s"
    if cur is not None:
        cur.execute(sql, (source, digest))
        return cur.fetchone() is not None
    with db.transaction(dsn) as c:
        c.execute(sql, (source, digest))
        return c.fetchone() is not None


def _chunks(rows: Iterable[tuple], size: int = STAGE_ROWS) -> Iterator[list[tuple]]:
    buf: list[tuple] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _write(dsn: str | None, source: str, digest: str, *,
           users: Iterable[tuple[int, int | None, str | None]],
           items: Iterable[tuple[int, str, str | None, list[str], int | None]],
           events: Iterable[pd.DataFrame], days: tuple[date, date] | None, hot_days: int,
           skipped: int) -> tuple[int, int, int] | None:
    """Write one load in one transaction; None when it is already recorded."""
    with db.transaction(dsn) as cur:
        # One bulk load at a time: concurrent loads would race on the same users/items.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
        if _recorded(dsn, source, digest, cur):
            return None
        n_items = _upsert_items(cur, items)
        n_users = _upsert_users(cur, users)
        log.info("%s: %d items and %d users written", source, n_items, n_users)
        n_events = 0
        if days is not None:
            lo, hi = days
            cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s, %s)",
                        (lo, hi, hi - timedelta(days=hot_days)))
            created = cur.fetchone()[0]
            log.info("%s: %d partitions created for %s..%s", source, created, lo, hi)
            n_events = _insert_events(cur, events, source)
        cur.execute("INSERT INTO loads (source, digest, users, items, interactions, skipped) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (source, digest, n_users, n_items, n_events, skipped))
    return n_users, n_items, n_events


def _upsert_items(cur: Cursor, rows: Iterable[tuple]) -> int:
    cur.execute("""CREATE TEMP TABLE stage_items (
                     item_id BIGINT, title TEXT, category TEXT, tags TEXT[], created_ts BIGINT)
                   ON COMMIT DROP""")
    for chunk in _chunks(rows):
        db.copy_rows(cur, "stage_items", ("item_id", "title", "category", "tags", "created_ts"),
                     chunk)
    cur.execute("""
        WITH up AS (
            INSERT INTO items AS i (item_id, title, category, tags, created_at, updated_at)
            SELECT item_id, title, category, tags,
                   COALESCE(to_timestamp(created_ts), now()), now()
            FROM stage_items
            ON CONFLICT (item_id) DO UPDATE
               SET title = EXCLUDED.title, category = EXCLUDED.category,
                   tags = EXCLUDED.tags, updated_at = EXCLUDED.updated_at
             WHERE (i.title, i.category, i.tags)
                   IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.category, EXCLUDED.tags)
            RETURNING 1)
        SELECT count(*) FROM up""")
    return cur.fetchone()[0]


def _upsert_users(cur: Cursor, rows: Iterable[tuple]) -> int:
    cur.execute("""CREATE TEMP TABLE stage_users (user_id BIGINT, created_ts BIGINT, country TEXT)
                   ON COMMIT DROP""")
    for chunk in _chunks(rows):
        db.copy_rows(cur, "stage_users", ("user_id", "created_ts", "country"), chunk)
    # An existing user keeps the earliest known creation time and any country it has.
    cur.execute("""
        WITH up AS (
            INSERT INTO users AS u (user_id, created_at, country)
            SELECT user_id, COALESCE(to_timestamp(created_ts), now()), country
            FROM stage_users
            ON CONFLICT (user_id) DO UPDATE
               SET created_at = LEAST(u.created_at, EXCLUDED.created_at),
                   country = COALESCE(u.country, EXCLUDED.country)
             WHERE EXCLUDED.created_at < u.created_at
                OR (u.country IS NULL AND EXCLUDED.country IS NOT NULL)
            RETURNING (xmax = 0) AS inserted)
        SELECT count(*) FILTER (WHERE inserted) FROM up""")
    return cur.fetchone()[0]


def _insert_events(cur: Cursor, chunks: Iterable[pd.DataFrame], source: str) -> int:
    cur.execute("""CREATE TEMP TABLE stage_events (
                     event_id BIGINT, user_id BIGINT, item_id BIGINT, event_type TEXT,
                     rating REAL, ts BIGINT) ON COMMIT DROP""")
    cols = ", ".join(EVENT_COLUMNS)
    copied = inserted = 0
    for chunk in chunks:
        buf = io.StringIO()
        chunk[list(EVENT_COLUMNS)].to_csv(buf, header=False, index=False)
        buf.seek(0)
        cur.copy_expert(f"COPY stage_events ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
        cur.execute("""
            INSERT INTO interactions (event_id, user_id, item_id, event_type, rating,
                                      "timestamp")
            SELECT event_id, user_id, item_id, event_type, rating, to_timestamp(ts)
            FROM stage_events
            ORDER BY ts  -- rows for one partition together: faster routing
            ON CONFLICT DO NOTHING""")
        inserted += cur.rowcount
        copied += len(chunk)
        cur.execute("TRUNCATE stage_events")
        log.info("%s: %d events read, %d inserted so far", source, copied, inserted)
    return inserted
