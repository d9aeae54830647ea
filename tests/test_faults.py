"""Publishing under faults, against real Postgres and the real reader app.

- A long analyst query on ``live_recommendations`` while a new version is published:
  no read waits on a lock, none answers from the fallback, the new version goes live
  while the query still runs, and the old version is retired once it has ended.
- Postgres killed with SIGKILL in the middle of a publish's COPY (its own instance, never
  the suite's shared one): after a restart the old version is intact and served, nothing
  staged is left, and the next publish succeeds.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from core import db, localpg
from jobs import publish
from serve.app import create_app
from tests.test_jobs import _partitions, _sql, _stage, _staged_tables
from tests.test_serve import make_key
from tests.test_serve_faults import own_db, own_pg  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DAY = dt.date(2026, 10, 31)
ANALYST_S = 60  # the analyst query's length
READ_BOUND_S = 1.0  # a read that waited on a lock would take the analyst's whole query


def _publish(dsn: str, tmp_path: Path, version: str, day: dt.date, **kw) -> dict:
    return publish.run(version, dsn=dsn, lake_root=tmp_path / "lake",
                       **_stage(tmp_path, version, dsn, logical_date=day), **kw)


def _reader(dsn: str, settings):
    app = create_app({"SETTINGS": settings, "READ_KEYS_REQUIRED": True})
    return app.test_client(), {"X-API-Key": make_key(dsn, ("read",))}


def _backend_waiting(dsn: str, query_like: str, timeout: float = 30.0) -> int:
    """pid of the backend running ``query_like`` (and waiting, or active)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _sql(dsn, "SELECT pid FROM pg_stat_activity WHERE query LIKE %s "
                         "AND pid <> pg_backend_pid() AND state = 'active'", (query_like,))
        if rows:
            return rows[0][0]
        time.sleep(0.02)
    raise AssertionError(f"no backend ran {query_like!r} within {timeout} s")


def test_a_long_analyst_query_never_stalls_readers_during_a_publish(settings, tmp_path):
    dsn = settings.dsn
    _sql(dsn, "INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two'), (3, 'Tri')")
    _publish(dsn, tmp_path, "v1", DAY)
    _publish(dsn, tmp_path, "v2", DAY + dt.timedelta(days=1))
    client, headers = _reader(dsn, settings)
    assert client.get("/api/v1/recommendations/10?limit=2",
                      headers=headers).get_json()["model_version"] == "v2"

    analyst = db.connect(dsn)
    analyst_done = threading.Event()
    analyst_end: list[float] = []

    def long_query() -> None:
        with analyst.cursor() as cur:
            cur.execute("SELECT count(*) FROM live_recommendations CROSS JOIN pg_sleep(%s)",
                        (ANALYST_S,))
        analyst.rollback()
        analyst_end.append(time.monotonic())
        analyst_done.set()

    paths = ("/api/v1/recommendations/10?limit=2", "/api/v1/similar/1?limit=1",
             "/api/v1/trending?limit=2")
    # What each path answers from the database when nothing runs (the fixture has no
    # 'trending' list: that path answers the database's popular list).
    baseline = {p: client.get(p, headers=headers).get_json()["source"] for p in paths}
    assert baseline == {paths[0]: "precomputed", paths[1]: "similar", paths[2]: "popular"}
    reads: list[tuple] = []  # start, seconds, version, source, status, path
    stop = threading.Event()

    def read_loop(path: str) -> None:
        c, h = _reader(dsn, settings)
        while not stop.is_set():
            t0 = time.monotonic()
            r = c.get(path, headers=h)
            body = r.get_json()
            reads.append((t0, time.monotonic() - t0, body.get("model_version"),
                          body.get("source"), r.status_code, path))
            time.sleep(0.01)

    threading.Thread(target=long_query, daemon=True).start()
    _backend_waiting(dsn, "SELECT count(*) FROM live_recommendations%")
    readers = [threading.Thread(target=read_loop, args=(p,), daemon=True) for p in paths]
    for t in readers:
        t.start()
    time.sleep(1.0)
    # v3 retires v1 (keep 2): its partitions are in the analyst query's plan.
    t_pub = time.monotonic()
    out = _publish(dsn, tmp_path, "v3", DAY + dt.timedelta(days=2), keep=2, retire_wait_s=2)
    published_s = time.monotonic() - t_pub
    during_analyst = not analyst_done.is_set()
    assert analyst_done.wait(ANALYST_S + 30)
    time.sleep(1.0)
    stop.set()
    for t in readers:
        t.join(timeout=10)
    slow = [r for r in reads if r[1] >= READ_BOUND_S]
    # None from the in-memory fallback ("memory"), all answered from the database.
    bad = [r for r in reads if r[4] != 200 or r[3] != baseline[r[5]]]
    assert len(reads) > 100 and not slow and not bad, (len(reads), slow[:5], bad[:5])
    seconds = sorted(r[1] for r in reads)
    print(f"reads during the analyst query: {len(reads)}, p99 "
          f"{seconds[int(0.99 * (len(seconds) - 1))] * 1000:.1f} ms, max "
          f"{seconds[-1] * 1000:.1f} ms; publish {published_s:.2f} s")
    switched = min(r[0] for r in reads if r[2] == "v3")
    assert switched < analyst_end[0], "v3 went live only after the analyst query ended"
    assert during_analyst and published_s < ANALYST_S / 2, published_s
    # v1 could not be detached yet: its detach is pending, finished by the next run.
    assert out["live"] is True and out["retired"] == [] and out["retire_pending"]
    # The next run finishes v1's retirement; v2 (previous) and v3 (live) stay.
    assert publish.retire(dsn, keep=2, wait_s=5) == {"retired": ["v1"], "pending": []}
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('v2')",
                                                   "FOR VALUES IN ('v3')"]
    assert _sql(dsn, "SELECT model_version, status FROM model_runs ORDER BY 1") == [
        ("v1", "retired"), ("v2", "published"), ("v3", "published")]
    assert _staged_tables(dsn) == []
    analyst.close()


def _postgres_pids(pg) -> list[int]:
    """The postmaster of ``pg`` and its children (processes this test started)."""
    pid = int((localpg.data_dir(pg) / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def _kill_postgres(pg, timeout: float = 60.0) -> None:
    """SIGKILL the postmaster and its children, and wait until they are gone (reaped:
    a zombie still counts as running for pg_ctl)."""
    pids = _postgres_pids(pg)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"Postgres processes {pids} still there"
        time.sleep(0.1)


def test_postgres_killed_in_the_middle_of_a_publish_copy(own_pg, own_db, tmp_path,  # noqa: F811
                                                         monkeypatch):
    from core import settings as settings_mod

    dsn = own_db
    monkeypatch.setenv("RECS_DATABASE_URL", dsn)
    monkeypatch.setenv("RECS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(settings_mod, "_cached", None)
    settings = settings_mod.get()
    _sql(dsn, "INSERT INTO items (item_id, title) VALUES (1, 'One'), (2, 'Two'), (3, 'Tri')")
    _publish(dsn, tmp_path, "v1", DAY)
    # Hold the second list table so that v2's publish stops between two COPYs, its
    # transaction holding a COPYed, uncommitted table; then kill Postgres with SIGKILL.
    holder = db.connect(dsn)
    errors: list[BaseException] = []

    def run_publish() -> None:
        try:
            _publish(dsn, tmp_path, "v2", DAY + dt.timedelta(days=1))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    with holder.cursor() as cur:
        cur.execute("LOCK TABLE similar_items IN ACCESS EXCLUSIVE MODE")
    t = threading.Thread(target=run_publish, daemon=True)
    t.start()
    try:
        _backend_waiting(dsn, "CREATE TABLE similar_items_v2%")
    except AssertionError:
        raise AssertionError((errors, _sql(dsn, "SELECT query, state, wait_event_type "
                                                "FROM pg_stat_activity"))) from None
    assert _sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                     "'CREATE TABLE similar_items_v2%%' AND wait_event_type = 'Lock'") == [(1,)]
    _kill_postgres(own_pg)
    t.join(timeout=30)
    assert errors and isinstance(errors[0], psycopg2.Error), errors  # the connection died
    holder.close()
    settings_mod._cached = None

    localpg.start(own_pg)  # crash recovery
    assert _sql(dsn, "SELECT live_version FROM serving_state") == [("v1",)]
    assert _partitions(dsn, "recommendations") == ["FOR VALUES IN ('v1')"]
    assert _staged_tables(dsn) == []
    client, headers = _reader(dsn, settings)
    body = client.get("/api/v1/recommendations/10?limit=2", headers=headers).get_json()
    assert body["source"] == "precomputed" and body["model_version"] == "v1"
    assert [e["item_id"] for e in body["recommendations"]] == [1, 2]
    # The next publish succeeds.
    out = _publish(dsn, tmp_path, "v2", DAY + dt.timedelta(days=1))
    assert out["live"] is True
    assert _sql(dsn, "SELECT live_version, previous_version FROM serving_state") == [
        ("v2", "v1")]
    body = client.get("/api/v1/recommendations/10?limit=2", headers=headers).get_json()
    assert body["model_version"] == "v2" and body["source"] == "precomputed"
