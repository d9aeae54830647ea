"""``recs status`` against the real test Postgres (and, marked ``airflow``, a real Airflow
metadata database with a real DAG run).
"""

from __future__ import annotations

import datetime as dt
import json
import re

import psycopg2
import pytest

from cli import main as cli_main
from cli import status
from core import db
from jobs.nearline import write_watermark
from tests.test_serve import DATA_UNTIL, NOW, VERSION, publish_fixture


def _events(dsn: str, rows: list[tuple[int, int, dt.datetime, dt.datetime]]) -> None:
    """(user, item, timestamp, ingested_at) rows into interactions."""
    with db.transaction(dsn) as cur:
        for user, item, ts, ingested in rows:
            cur.execute('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        '"timestamp", ingested_at) VALUES (nextval(%s), %s, %s, %s, %s, %s)',
                        ("interactions_event_id_seq", user, item, "click", ts, ingested))


def test_nothing_yet(dsn):
    st = status.gather(dsn, dsn, NOW)  # a database without Airflow's tables
    text = status.render(st)
    assert text.splitlines()[0] == "live version: none (nothing published yet: recs pipeline)"
    assert "(Airflow metadata database not migrated yet)" in text
    for dag in status.DAGS:
        assert re.search(rf"^  {dag} +never run$", text, re.M), dag
    assert "nearline: never run" in text
    assert "fallback rate: - (no user active in the last 7 days)" in text


def test_unreachable_airflow_database_says_so_and_never_run(dsn):
    st = status.gather(dsn, "postgresql://nobody:secret@127.0.0.1:9/airflow", NOW)
    text = status.render(st)
    assert "unreachable" in text and "secret" not in text
    assert all(run is None for run in st.dag_runs.values())


def test_live_version_figures_nearline_lag_and_fallback_rate(dsn):
    publish_fixture(dsn)  # lists for users 7, 8 and 9
    with db.transaction(dsn) as cur:
        cur.execute("UPDATE model_runs SET logical_date = '2024-01-01', n_users = 3, "
                    "n_items = 40, n_interactions = 123, metrics = %s WHERE model_version = %s",
                    (json.dumps({"published_model": {"name": "als", "reason": "best"},
                                 "reranked": {"als": {"ndcg@10": 0.3125,
                                                      "precision@10": 0.25}}}), VERSION))
        cur.execute("UPDATE serving_state SET switched_at = %s",
                    (NOW - dt.timedelta(hours=3, minutes=12),))
        write_watermark(cur, "nearline", NOW - dt.timedelta(minutes=30), VERSION, {})
    # Active in the last 7 days: 7 and 8 (lists), 500 and 501 (none); 9 only long ago.
    _events(dsn, [
        (7, 1, NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=2)),  # applied
        (8, 2, NOW - dt.timedelta(minutes=20), NOW - dt.timedelta(minutes=20)),  # waiting
        (500, 3, NOW - dt.timedelta(minutes=10), NOW - dt.timedelta(minutes=10)),  # waiting
        (501, 4, NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=2)),
        (9, 5, NOW - dt.timedelta(days=20), NOW - dt.timedelta(days=20)),
    ])
    text = status.render(status.gather(dsn, None, NOW))
    lines = text.splitlines()
    assert lines[0].startswith(f"live version: {VERSION} (day 2024-01-01), published ")
    assert lines[0].endswith(", 3 h 12 min ago")
    assert f"data until {DATA_UNTIL.strftime('%Y-%m-%d %H:%M:%S')} UTC (1 h 0 min ago)" \
        in lines[1]
    assert "trained on 3 users, 40 items, 123 interactions; lists for 3 users" in lines[1]
    assert lines[2] == ("  published model: als, NDCG@10 0.3125, precision@10 0.2500 "
                        "(the gate's held-out users)")
    assert "last DAG runs: (no Airflow metadata database configured)" in text
    assert "nearline: lag 20 min (2 events waiting); watermark " in text
    assert "last run 0 s ago" in text
    assert ("fallback rate: 50.0% (2 of 4 users active in the last 7 days have no list in "
            "the live version and get popular items)") in text


def test_nearline_caught_up_has_no_lag(dsn):
    publish_fixture(dsn)
    _events(dsn, [(7, 1, NOW - dt.timedelta(minutes=5), NOW - dt.timedelta(minutes=5))])
    with db.transaction(dsn) as cur:
        write_watermark(cur, "nearline", NOW, VERSION, {})
    text = status.render(status.gather(dsn, None, NOW))
    assert "nearline: lag 0 s (no event waiting)" in text
    assert "fallback rate: 0.0% (0 of 1 users" in text


@pytest.mark.airflow
@pytest.mark.slow
def test_recs_status_reads_a_real_dag_run(settings, dsn, monkeypatch, capsys):
    """Airflow's metadata in the test database (migrated by `airflow db migrate`), one real
    run of the maintenance DAG (`airflow dags test`), then `recs status` as a command."""
    from core.db import sqlalchemy_url

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sqlalchemy_url(dsn))
    cli_main.airflow_db_ready(settings)
    logical = (NOW - dt.timedelta(hours=1)).replace(minute=15, second=0)
    cli_main.airflow(settings, "dags", "test", "maintenance", logical.isoformat(),
                     capture=True)
    publish_fixture(dsn)
    assert cli_main.main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"live version: {VERSION}" in out
    run = re.search(r"^  maintenance +(\S+) +(\S+), logical date (.+?), started", out, re.M)
    assert run, out
    assert run.group(1) == "success"
    assert run.group(3) == logical.strftime("%Y-%m-%d %H:%M:%S UTC")
    for dag in ("daily", "nearline", "hourly"):
        assert re.search(rf"^  {dag} +never run$", out, re.M), out
    conn = psycopg2.connect(db.libpq_dsn(dsn))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'maintenance'")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
