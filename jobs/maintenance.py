"""Partition maintenance of ``interactions``: ahead, the DEFAULT partition, retention.

Run hourly by ``dags/maintenance.py`` and once by ``recs maintenance``:

1. **Default**: rows in ``interactions_default`` (an event whose day had no partition)
   move into day partitions of their own, created for them
   (``recs_drain_default_partition``, sql/008): moved in one transaction, so each row is
   in exactly one place and counted once.
2. **Ahead**: day partitions from today to today + ``partitions_ahead_days`` (UTC) exist,
   so that events arriving now never wait for DDL (the reader never runs any).
3. **Retention** (only when ``retention_days`` > 0; 0, the default, never drops anything):
   each partition wholly older than ``retention_days`` days is exported to the lake as
   one Parquet file, ``<lake>/archive/interactions/<partition>.parquet`` (written beside,
   its row count checked against the partition's), detached and dropped, and the file
   renamed into place, all in the transaction that holds the partition against writes
   meanwhile. A failed export or check drops nothing. Late events of an archived day
   come back as a new partition, exported later to ``<partition>.2.parquet`` (and so
   on): an export never replaces an earlier one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core import db, lake
from core import settings as settings_mod

log = logging.getLogger(__name__)

ARCHIVE = ("archive", "interactions")
CHUNK = 50_000
# Creating or detaching a partition locks ``interactions``, which readers also use: wait
# at most this long for the lock (readers queue behind a waiting DDL), then retry.
LOCK_TIMEOUT_MS = 500
LOCK_TRIES = 5
_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")
COLUMNS = ("event_id", "user_id", "item_id", "event_type", "rating", "timestamp", "context",
           "ingested_at", "key_id")


@dataclass
class Report:
    created: int = 0
    moved: int = 0
    archived: list[dict] = field(default_factory=list)  # {partition, rows, path}
    # Steps and partitions left for the next run: interactions stayed locked.
    kept_by_lock: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"created": self.created, "moved": self.moved, "archived": self.archived,
                "kept_by_lock": self.kept_by_lock}


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("event_id", pa.int64()), ("user_id", pa.int64()), ("item_id", pa.int64()),
        ("event_type", pa.string()), ("rating", pa.float32()),
        ("timestamp", pa.timestamp("us", tz="UTC")), ("context", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")), ("key_id", pa.int64()),
    ])


def archive_path(partition: str, lake_root: Path | None = None, n: int = 1) -> Path:
    """Where export ``n`` of ``partition`` goes: ``<partition>.parquet`` for the first,
    ``<partition>.<n>.parquet`` for a later one (late events of an archived day)."""
    name = f"{partition}.parquet" if n == 1 else f"{partition}.{n}.parquet"
    return Path(lake_root or lake.root()).joinpath(*ARCHIVE, name)


def archive_paths(partition: str, lake_root: Path | None = None) -> list[Path]:
    """Every export of ``partition`` so far, in order."""
    out = []
    while (path := archive_path(partition, lake_root, len(out) + 1)).exists():
        out.append(path)
    return out


def partitions(cur) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """(name, lower, upper) of each range partition of ``interactions`` (not DEFAULT)."""
    cur.execute("SET TIME ZONE 'UTC'")
    cur.execute("""SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = 'interactions'::regclass ORDER BY 1""")
    out = []
    for name, bound in cur.fetchall():
        m = _BOUND.search(bound or "")
        if m:
            out.append((name, dt.datetime.fromisoformat(m.group(1)),
                        dt.datetime.fromisoformat(m.group(2))))
    return sorted(out, key=lambda p: p[1])


class Busy(RuntimeError):
    """``interactions`` stayed locked (a long query) through every try."""


def _ddl(dsn: str | None, sql: str, params: tuple = ()) -> int:
    """Run one partition-creating statement in its own transaction under lock_timeout:
    creating a partition locks ``interactions``, and readers queue behind a DDL that
    waits (behind a long analyst query, say). Retried a few times, then :class:`Busy`."""
    import psycopg2

    for attempt in range(LOCK_TRIES):
        try:
            with db.transaction(dsn) as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (f"{LOCK_TIMEOUT_MS}ms",))
                cur.execute(sql, params)
                return cur.fetchone()[0]
        except psycopg2.errors.LockNotAvailable:
            log.warning("interactions busy (try %d of %d)", attempt + 1, LOCK_TRIES)
            time.sleep(0.5 * (attempt + 1))
    raise Busy(f"interactions stayed locked through {LOCK_TRIES} tries of "
               f"{LOCK_TIMEOUT_MS} ms; the next run tries again")


def ensure_ahead(dsn: str | None, today: dt.date, ahead_days: int) -> int:
    """Day partitions for today .. today + ahead_days; the number created now."""
    return _ddl(dsn, "SELECT recs_ensure_interaction_partitions(%s, %s)",
                (today, today + dt.timedelta(days=ahead_days)))


def drain_default(dsn: str | None) -> int:
    """Move the DEFAULT partition's rows into partitions of their own; rows moved."""
    return _ddl(dsn, "SELECT recs_drain_default_partition()")


def _export(cur, partition: str, tmp: Path) -> int:
    """Write every row of ``partition`` (read through ``cur``'s transaction) to ``tmp``."""

    schema = _schema()
    named = cur.connection.cursor(name=f"archive_{partition}")
    try:
        named.itersize = CHUNK
        named.execute(f'SELECT event_id, user_id, item_id, event_type, rating, '
                      f'"timestamp", context::text, ingested_at, key_id FROM {partition} '
                      f'ORDER BY "timestamp", event_id')
        n = lake.write_cursor(named, schema, tmp, CHUNK)
    finally:
        named.close()
    return n


def archive_partition(dsn: str | None, partition: str, lake_root: Path | None = None
                      ) -> dict | None:
    """Export ``partition`` to the lake, check it, then detach and drop it, in one
    transaction that holds the partition against writes meanwhile. None when the lock on
    ``interactions`` was not granted in time (nothing dropped; the next run retries)."""
    import psycopg2
    import pyarrow.parquet as pq

    for attempt in range(LOCK_TRIES):
        # Never over an earlier export: late events of a day already archived come back
        # as a new partition of that day, exported beside the first file.
        final = archive_path(partition, lake_root, len(archive_paths(partition, lake_root)) + 1)
        tmp = lake.atomic_file(final)
        conn = db.connect(dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (f"{LOCK_TIMEOUT_MS}ms",))
                # No write reaches the partition from here to the drop.
                cur.execute(f"LOCK TABLE {partition} IN SHARE MODE")
                cur.execute(f"SELECT count(*) FROM {partition}")
                expected = cur.fetchone()[0]
                written = _export(cur, partition, tmp)
                on_disk = pq.ParquetFile(tmp).metadata.num_rows
                if not written == on_disk == expected:
                    raise RuntimeError(f"{partition}: exported {written} rows, the file holds "
                                       f"{on_disk}, the partition {expected}; nothing dropped")
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                cur.execute(f"ALTER TABLE interactions DETACH PARTITION {partition}")
                cur.execute(f"DROP TABLE {partition}")
                # The file takes its name last: a failure before this point drops
                # nothing and leaves no file; the commit follows at once.
                os.replace(tmp, final)
            return {"partition": partition, "rows": expected, "path": str(final)}
        except psycopg2.errors.LockNotAvailable:
            log.warning("%s: interactions busy (try %d of %d)", partition, attempt + 1,
                        LOCK_TRIES)
            time.sleep(0.5 * (attempt + 1))
        finally:
            conn.close()
            if tmp.exists():
                tmp.unlink()
    return None


def run(now: dt.datetime | None = None, *, dsn: str | None = None,
        lake_root: Path | None = None, ahead_days: int | None = None,
        retention_days: int | None = None,
        progress: Callable[[str], None] | None = None) -> dict:
    """The maintenance once; a summary (partitions created, rows moved, archived)."""
    s = settings_mod.get()
    say = progress or log.info
    ahead_days = s.partitions_ahead_days if ahead_days is None else ahead_days
    retention_days = s.retention_days if retention_days is None else retention_days
    now = now or dt.datetime.now(dt.UTC)
    today = now.astimezone(dt.UTC).date()
    rep = Report()
    t0 = time.perf_counter()
    try:
        rep.moved = drain_default(dsn)
        say(f"default partition: {rep.moved} rows moved into day partitions")
    except Busy as exc:
        rep.kept_by_lock.append("interactions_default")
        say(f"default partition: not emptied, {exc}")
    try:
        rep.created = ensure_ahead(dsn, today, ahead_days)
        say(f"ahead: {rep.created} partitions created for {today}..."
            f"{today + dt.timedelta(days=ahead_days)}")
    except Busy as exc:
        rep.kept_by_lock.append("ahead")
        say(f"ahead: no partition created, {exc}")
    if retention_days <= 0:
        say("retention: off (retention_days = 0), nothing dropped")
    else:
        cutoff = dt.datetime.combine(today - dt.timedelta(days=retention_days), dt.time(),
                                     tzinfo=dt.UTC)
        with db.transaction(dsn) as cur:
            old = [name for name, _lo, hi in partitions(cur) if hi <= cutoff]
        say(f"retention: {len(old)} partitions wholly before {cutoff.date()} "
            f"({retention_days} days)")
        for name in old:
            done = archive_partition(dsn, name, lake_root)
            if done is None:
                rep.kept_by_lock.append(name)
                say(f"  {name}: interactions busy, kept for the next run")
                continue
            rep.archived.append(done)
            say(f"  {name}: {done['rows']} rows exported to {done['path']}, dropped")
    say(f"maintenance done in {time.perf_counter() - t0:.1f}s")
    return rep.as_dict()
