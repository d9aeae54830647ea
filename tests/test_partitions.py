"""Partitions of ``interactions`` (issue 11, item 1): the DEFAULT partition, creation
ahead, and retention that exports to the lake before it drops anything.

Real Postgres: each test gets a fresh migrated database (tests/conftest.py). Events are
written as the reader writes them: through the parent table, as role ``recs_reader``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg2
import pyarrow.parquet as pq
import pytest

from cli import main as cli
from core.settings import READER_ROLE
from jobs import extract, maintenance
from tests.conftest import role_url

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TODAY = NOW.date()


def insert_as_reader(dsn: str, stamps: list[dt.datetime], user: int = 1) -> None:
    """Events at ``stamps`` stored as the reader stores them (no DDL, parent table)."""
    conn = psycopg2.connect(role_url(dsn, READER_ROLE))
    try:
        with conn, conn.cursor() as cur:
            for i, ts in enumerate(stamps):
                cur.execute("INSERT INTO interactions (event_id, user_id, item_id, "
                            "event_type, \"timestamp\", key_id) VALUES "
                            "(nextval('interactions_event_id_seq'), %s, %s, 'click', %s, 7)",
                            (user, 100 + i, ts))
    finally:
        conn.close()


def where(dsn: str) -> dict[str, int]:
    """Rows per partition."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tableoid::regclass::text, count(*) FROM interactions "
                        "GROUP BY 1")
            return dict(cur.fetchall())
    finally:
        conn.close()


def names(dsn: str) -> set[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT c.relname FROM pg_inherits i JOIN pg_class c
                           ON c.oid = i.inhrelid
                           WHERE i.inhparent = 'interactions'::regclass""")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def event_ids(dsn: str) -> set[int]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT event_id FROM interactions")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def day_name(d: dt.date) -> str:
    return f"interactions_p{d:%Y%m%d}"


def test_event_without_partition_is_stored_moved_and_counted_once(settings, tmp_path):
    """Before sql/008 the insert failed: 'no partition of relation "interactions" found
    for row' (the reader then created partitions itself, on the request path)."""
    dsn = settings.dsn
    old = dt.datetime(1971, 1, 1, 12, tzinfo=dt.UTC)
    insert_as_reader(dsn, [old, old + dt.timedelta(days=8), NOW - dt.timedelta(hours=1)])
    assert where(dsn) == {"interactions_default": 3}
    before = event_ids(dsn)

    out = maintenance.run(NOW, ahead_days=2, retention_days=0)

    assert out["moved"] == 3
    assert where(dsn) == {day_name(old.date()): 1, day_name(old.date() + dt.timedelta(8)): 1,
                          day_name((NOW - dt.timedelta(hours=1)).date()): 1}
    assert event_ids(dsn) == before
    # One partition per day that had rows, not one per day of fifty years.
    assert len(names(dsn)) <= 2 + 3 + 1 + 1
    # The extract reads each event once.
    got = extract.run(TODAY, dsn=dsn, lake_root=tmp_path / "lake", window_days=0)
    assert got["n_events"] == 3


def test_extract_reads_rows_still_in_the_default_partition(settings, tmp_path):
    """Rows the maintenance has not moved yet are read once by the extract (which itself
    creates partitions ahead and so moves the rows of those days)."""
    dsn = settings.dsn
    insert_as_reader(dsn, [NOW - dt.timedelta(days=3), NOW])
    got = extract.run(TODAY, dsn=dsn, lake_root=tmp_path / "lake", window_days=0)
    assert got["n_events"] == 2
    assert sum(where(dsn).values()) == 2


def test_creating_a_partition_moves_the_rows_waiting_in_the_default(dsn):
    """Before: Postgres refused ('updated partition constraint for default partition
    "interactions_default" would be violated by some row')."""
    day = dt.date(2026, 3, 17)
    ts = dt.datetime(2026, 3, 17, 10, tzinfo=dt.UTC)
    insert_as_reader(dsn, [ts, ts + dt.timedelta(hours=1)])
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s)", (day, day))
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
    assert where(dsn) == {day_name(day): 2}


def test_partitions_are_created_ahead(settings):
    maintenance.run(NOW, ahead_days=3, retention_days=0)
    have = names(settings.dsn)
    for k in range(4):
        assert day_name(TODAY + dt.timedelta(days=k)) in have
    # The reader writes into partitions the pipeline created after the grants (sql/009):
    # through the parent, whose privileges are the ones checked.
    insert_as_reader(settings.dsn, [NOW, NOW + dt.timedelta(days=2)])
    assert where(settings.dsn) == {day_name(TODAY): 1,
                                   day_name(TODAY + dt.timedelta(days=2)): 1}


def test_retention_exports_every_row_then_drops(settings, tmp_path):
    dsn = settings.dsn
    lake_root = tmp_path / "lake"
    old_days = [TODAY - dt.timedelta(days=40), TODAY - dt.timedelta(days=31)]
    recent = TODAY - dt.timedelta(days=29)
    stamps = [dt.datetime.combine(d, dt.time(h), tzinfo=dt.UTC)
              for d in old_days for h in (0, 5, 23)]
    stamps.append(dt.datetime.combine(recent, dt.time(1), tzinfo=dt.UTC))
    insert_as_reader(dsn, stamps)
    maintenance.run(NOW, ahead_days=0, retention_days=0)  # rows into day partitions
    ids_by_day = {}
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for d in old_days:
            cur.execute(f"SELECT event_id FROM {day_name(d)}")
            ids_by_day[d] = {r[0] for r in cur.fetchall()}
    conn.close()

    out = maintenance.run(NOW, ahead_days=0, retention_days=30, lake_root=lake_root)

    assert sorted(a["partition"] for a in out["archived"]) == sorted(map(day_name, old_days))
    have = names(dsn)
    for d in old_days:
        assert day_name(d) not in have
        table = pq.read_table(maintenance.archive_path(day_name(d), lake_root))
        assert set(table.column("event_id").to_pylist()) == ids_by_day[d]
        assert table.num_rows == 3
        assert table.column("key_id").to_pylist() == [7, 7, 7]
    assert day_name(recent) in have
    assert sum(where(dsn).values()) == 1
    # No temporary file left beside the archives.
    assert sorted(p.name for p in maintenance.archive_path("x", lake_root).parent.iterdir()) \
        == sorted(f"{day_name(d)}.parquet" for d in old_days)


def test_late_events_of_an_archived_day_never_replace_its_archive(settings, tmp_path):
    dsn = settings.dsn
    lake_root = tmp_path / "lake"
    day = TODAY - dt.timedelta(days=45)
    at = dt.datetime.combine(day, dt.time(6), tzinfo=dt.UTC)
    insert_as_reader(dsn, [at, at + dt.timedelta(hours=1)])
    first = event_ids(dsn)
    maintenance.run(NOW, ahead_days=0, retention_days=30, lake_root=lake_root)
    insert_as_reader(dsn, [at + dt.timedelta(hours=2)], user=2)  # late, same day
    late = event_ids(dsn)
    out = maintenance.run(NOW, ahead_days=0, retention_days=30, lake_root=lake_root)
    assert out["moved"] == 1 and len(out["archived"]) == 1
    files = maintenance.archive_paths(day_name(day), lake_root)
    assert [p.name for p in files] == [f"{day_name(day)}.parquet",
                                       f"{day_name(day)}.2.parquet"]
    assert set(pq.read_table(files[0]).column("event_id").to_pylist()) == first
    assert set(pq.read_table(files[1]).column("event_id").to_pylist()) == late
    assert event_ids(dsn) == set()


def test_retention_zero_drops_nothing(settings, tmp_path):
    dsn = settings.dsn
    assert settings.retention_days == 0  # the default
    ancient = [dt.datetime(2001, 1, 1, tzinfo=dt.UTC), dt.datetime(1999, 5, 5, tzinfo=dt.UTC)]
    insert_as_reader(dsn, ancient)
    maintenance.run(NOW, ahead_days=0, lake_root=tmp_path / "lake")
    assert sum(where(dsn).values()) == 2
    assert {day_name(t.date()) for t in ancient} <= names(dsn)
    assert not (tmp_path / "lake").exists()


def test_cli_maintenance_prints_progress(settings, capsys, monkeypatch):
    insert_as_reader(settings.dsn, [NOW - dt.timedelta(days=2)])
    assert cli.main(["maintenance"]) == 0
    out = capsys.readouterr().out
    assert "ahead:" in out and "1 rows moved" in out and "retention: off" in out


@pytest.mark.parametrize("days", ["-1", "abc"])
def test_bad_retention_setting_is_refused(days):
    from core import settings as settings_mod

    with pytest.raises(settings_mod.SettingsError, match="RECS_RETENTION_DAYS"):
        settings_mod.load(env={"RECS_RETENTION_DAYS": days})


def test_maintenance_never_makes_readers_queue_behind_a_long_query(settings, monkeypatch):
    """A long query holds ``interactions`` (an analyst's); partition DDL would wait for it
    and every reader would queue behind the waiting DDL. The maintenance waits at most
    LOCK_TIMEOUT_MS per try, gives up, and says so; readers meanwhile wait no longer than
    that. (Before: no lock_timeout, the DDL and then every reader waited for the query.)"""
    dsn = settings.dsn
    monkeypatch.setattr(maintenance, "LOCK_TRIES", 2)
    analyst = psycopg2.connect(dsn)
    analyst.cursor().execute("SELECT count(*) FROM interactions")  # lock held: open txn
    out: dict = {}
    job = threading.Thread(target=lambda: out.update(
        maintenance.run(NOW, ahead_days=2, retention_days=0)))
    waits = []
    try:
        job.start()
        reader = psycopg2.connect(role_url(dsn, READER_ROLE),
                                  options="-c statement_timeout=2000")
        reader.autocommit = True
        while job.is_alive():
            t0 = time.perf_counter()
            with reader.cursor() as cur:
                cur.execute("SELECT count(*) FROM interactions WHERE user_id = 1")
            waits.append(time.perf_counter() - t0)
            time.sleep(0.05)
        reader.close()
    finally:
        job.join(timeout=60)
        analyst.rollback()
        analyst.close()
    assert out["kept_by_lock"] == ["ahead"]
    assert len(waits) > 5 and max(waits) < maintenance.LOCK_TIMEOUT_MS / 1000 + 0.4
    assert day_name(TODAY) not in names(dsn)
    # With the query gone, the next run does it.
    assert maintenance.run(NOW, ahead_days=2, retention_days=0)["created"] == 3
