"""Least privilege for the database (issue 11, item 4) and no password printed.

Against the suite's real private Postgres (scram-sha-256, passwords in the instance's
0600 password file): the reader role can do what serve/ does and nothing else, analysts
read their views and not the tables behind them, the pipeline owns the schema without
being a superuser, a connection without the password is refused, and neither
``recs db-up`` nor the Airflow banner prints a password. A cluster made the old way
(``trust``, everything owned by the bootstrap superuser) is upgraded in place.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from core import localpg
from core import settings as settings_mod
from core.settings import ADMIN_ROLE, ANALYST_ROLE, PIPELINE_ROLE, PROJECT_ROOT, READER_ROLE
from serve.app import create_app
from tests.conftest import role_url
from tests.test_serve import VERSION, count_events, event, make_key, publish_fixture

RECS = str(Path(sys.executable).parent / "recs")

# What the reader must never do (each is refused with "permission denied" / 42501).
REFUSED_TO_READER = [
    "CREATE TABLE stolen (a int)",
    "CREATE TEMP TABLE stolen (a int)",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/recs-pwned'",
    "COPY interactions TO '/tmp/recs-pwned'",
    "SELECT pg_read_file('pg_hba.conf')",
    "DELETE FROM interactions",
    "TRUNCATE interactions",
    "UPDATE interactions SET rating = 1",
    "UPDATE api_keys SET revoked_at = NULL",
    "INSERT INTO api_keys (name, prefix, salt, key_hash, scopes) "
    "VALUES ('x', 'x', 'x', 'x', '{admin}')",
    "DELETE FROM rerank_rules",
    # The catalog API writes items' own fields (sql/014_catalog_api.sql), nothing else.
    "INSERT INTO items (item_id, title, popularity) VALUES (999999, 'x', 1)",
    "UPDATE items SET popularity = 1",
    "DELETE FROM items",
    "UPDATE users SET country = 'FR'",
    "DELETE FROM users",
    "UPDATE external_ids SET internal_id = internal_id + 1",
    "DELETE FROM external_ids",
    "UPDATE serving_state SET live_version = NULL",
    "SELECT * FROM users",
    "SELECT * FROM embeddings",
    "SELECT * FROM pipeline_watermarks",
    "DROP TABLE items",
    "ALTER TABLE interactions ADD COLUMN x int",
    "SELECT recs_ensure_interaction_partitions(current_date, current_date)",
    "SELECT recs_drain_default_partition()",
    "CREATE ROLE intruder",
]
# Analysts: the views and what docs/analyst-queries.md reads; none of these.
REFUSED_TO_ANALYST = [
    "SELECT * FROM recommendations",
    "SELECT * FROM similar_items",
    "SELECT * FROM trending",
    "SELECT * FROM api_keys",
    "SELECT * FROM users",
    "SELECT * FROM rerank_rules",
    "INSERT INTO interactions (event_id, user_id, item_id, event_type, \"timestamp\") "
    "VALUES (1, 1, 1, 'click', now())",
    "CREATE TABLE stolen (a int)",
    "COPY (SELECT 1) TO PROGRAM 'true'",
]
ANALYST_READS = ["live_recommendations", "live_similar_items", "live_trending",
                 "model_run_figures", "serving_state", "model_runs", "items", "interactions"]


def _refused(url: str, statements: list[str]) -> list[str]:
    """The statements among ``statements`` that were NOT refused for lack of privilege."""
    allowed = []
    conn = psycopg2.connect(url)
    try:
        for sql in statements:
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                allowed.append(sql)
            except psycopg2.errors.InsufficientPrivilege:
                pass
            finally:
                conn.rollback()
    finally:
        conn.close()
    return allowed


def _one(url: str, sql: str, params=()):
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()
    finally:
        conn.close()


def test_reader_is_refused_everything_but_its_grants(dsn):
    assert _refused(role_url(dsn, READER_ROLE), REFUSED_TO_READER) == []
    assert not os.path.exists("/tmp/recs-pwned")
    flags = _one(dsn, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM "
                      "pg_roles WHERE rolname = %s", (READER_ROLE,))
    assert flags == (False, False, False, False)


def test_reader_can_do_everything_serve_does(settings, dsn):
    """The real app, connected as recs_reader, answers a read from the published lists
    and stores an event (the key id with it)."""
    publish_fixture(dsn)
    key = make_key(dsn, ("read", "events"))
    reader = settings.replace(reader_database_url=role_url(dsn, READER_ROLE))
    app = create_app({"SETTINGS": reader, "TESTING": True, "STORE_BACKOFF_S": 0.2})
    try:
        assert f"{READER_ROLE}@" in app.extensions["recs"].store.dsn
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = key
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        assert body["source"] == "precomputed" and body["model_version"] == VERSION
        assert client.get("/api/v1/recommendations/20?type=similar&limit=2").status_code \
            == 200
        assert client.get("/api/v1/recommendations/7?type=trending&limit=2").status_code \
            == 200
        r = client.post("/api/v1/events", json=event(7, 20))
        assert r.status_code == 201, r.get_json()
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["recs"].store.close()
    assert count_events(dsn) == 1
    assert _one(dsn, "SELECT key_id IS NOT NULL FROM interactions") == (True,)


def test_analyst_reads_views_not_tables(dsn):
    publish_fixture(dsn)
    url = role_url(dsn, ANALYST_ROLE)
    for view in ANALYST_READS:
        _one(url, f"SELECT count(*) FROM {view}")
    # The live views run with their owner's rights: rows without a grant on the lists.
    assert _one(url, "SELECT count(*) FROM live_recommendations")[0] > 0
    assert _refused(url, REFUSED_TO_ANALYST) == []


def test_analyst_runs_every_documented_query(dsn):
    """docs/analyst-queries.md, as recs_analyst: no query needs more than its grants."""
    import re

    publish_fixture(dsn)
    text = (PROJECT_ROOT / "docs" / "analyst-queries.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(queries) >= 6
    conn = psycopg2.connect(role_url(dsn, ANALYST_ROLE))
    try:
        for q in queries:
            with conn.cursor() as cur:
                cur.execute(q)
                cur.fetchall()
            conn.rollback()
    finally:
        conn.close()


def test_pipeline_owns_the_schema_and_is_no_superuser(dsn):
    owners = _one(dsn, """SELECT array_agg(DISTINCT pg_get_userbyid(c.relowner))
                          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = 'public'""")[0]
    assert owners == [PIPELINE_ROLE]
    assert _one(dsn, "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = "
                     "current_user") == (False, False)
    assert _refused(dsn, ["COPY (SELECT 1) TO PROGRAM 'true'", "CREATE ROLE intruder",
                          "SELECT pg_read_file('pg_hba.conf')"]) == []


def test_pipeline_sees_when_the_readers_open_transactions_started(dsn):
    """The nearline watermark (jobs/nearline.py:safe_until) stops before the oldest
    unfinished writing transaction; the reader's event inserts run as another role, whose
    xact_start pg_stat_activity shows only to pg_read_all_stats (before: NULL, so the
    watermark passed events not yet committed and nearline skipped them for good)."""
    from jobs.nearline import safe_until

    reader = psycopg2.connect(role_url(dsn, READER_ROLE))
    try:
        with reader.cursor() as cur:
            cur.execute("INSERT INTO interactions (event_id, user_id, item_id, event_type, "
                        "\"timestamp\") VALUES (nextval('interactions_event_id_seq'), 1, 1, "
                        "'click', now()) RETURNING now()")
            started = cur.fetchone()[0]
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                assert safe_until(cur, None) <= started
        finally:
            conn.close()
    finally:
        reader.rollback()
        reader.close()


def test_connection_without_the_password_is_refused(pg_instance, dsn):
    name = dsn.split("/")[-1].split("?")[0]
    for role in (ADMIN_ROLE, PIPELINE_ROLE, READER_ROLE, ANALYST_ROLE):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=pg_instance.pg_port, user=role,
                             dbname=name, passfile=os.devnull + "-none")
        with pytest.raises(psycopg2.OperationalError, match="password authentication"):
            psycopg2.connect(host="127.0.0.1", port=pg_instance.pg_port, user=role,
                             dbname=name, password="guess")
        # Nor over the socket.
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host=str(localpg.socket_dir(pg_instance)),
                             port=pg_instance.pg_port, user=role, dbname=name,
                             passfile=os.devnull + "-none")
    hba = _one(role_url(dsn, ADMIN_ROLE), "SELECT array_agg(DISTINCT auth_method) FROM "
                                          "pg_hba_file_rules")[0]
    assert hba == ["scram-sha-256"]


def test_password_files_are_private(pg_instance):
    for path in (localpg.passfile(pg_instance), localpg.REGISTRY):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert set(localpg.passwords(pg_instance)) == {ADMIN_ROLE, PIPELINE_ROLE, READER_ROLE,
                                                   ANALYST_ROLE}


def _secrets(s) -> list[str]:
    return list(localpg.passwords(s).values())


def test_db_up_prints_no_password(pg_instance, dsn):
    """recs db-up on the suite's instance, and on a URL that carries a password
    (before: the URL was printed whole)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECS_")}
    env.update(RECS_HOME=str(pg_instance.home), RECS_PG_PORT=str(pg_instance.pg_port))
    r = subprocess.run([RECS, "db-up"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "database ready" in out and "pgpass" in out
    pw = localpg.passwords(pg_instance)
    assert not any(p in out for p in pw.values())
    with_password = dsn.split("?")[0].replace(f"{PIPELINE_ROLE}@",
                                              f"{PIPELINE_ROLE}:{pw[PIPELINE_ROLE]}@")
    r = subprocess.run([RECS, "db-up"], env={**env, "RECS_DATABASE_URL": with_password},
                       capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stderr
    assert "database ready" in r.stdout and pw[PIPELINE_ROLE] not in r.stdout + r.stderr


def test_db_init_gives_the_reader_the_login_of_its_url(pg_instance, dsn):
    """A server the project does not manage (docker/compose.yaml): the migration creates
    recs_reader NOLOGIN; `recs db-init` gives it the login and password of
    RECS_READER_DATABASE_URL, printing neither. (Before: the compose reader connected as
    the superuser of RECS_DATABASE_URL.)"""
    pw = localpg.passwords(pg_instance)[READER_ROLE]  # the same: other tests keep working
    admin_url = role_url(dsn, ADMIN_ROLE)
    reader_url = role_url(dsn, READER_ROLE).split("?")[0].replace(
        f"{READER_ROLE}@", f"{READER_ROLE}:{pw}@")
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f"ALTER ROLE {READER_ROLE} NOLOGIN")
    admin.close()
    try:
        with pytest.raises(psycopg2.OperationalError, match="not permitted to log in"):
            psycopg2.connect(reader_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECS_")}
        env.update(RECS_HOME=str(pg_instance.home), RECS_DATABASE_URL=admin_url,
                   RECS_READER_DATABASE_URL=reader_url)
        r = subprocess.run([RECS, "db-init"], env=env, capture_output=True, text=True,
                           timeout=300, cwd=PROJECT_ROOT)
        assert r.returncode == 0, r.stderr
        assert f"{READER_ROLE}: login enabled" in r.stdout
        assert pw not in r.stdout + r.stderr
        assert _one(reader_url, "SELECT current_user") == (READER_ROLE,)
    finally:
        localpg.start(pg_instance)  # LOGIN back whatever happened


def test_airflow_banner_names_the_password_file_not_the_password(tmp_path):
    from cli import airflow_ui

    s = settings_mod.load(env={}, home=tmp_path)
    ui = airflow_ui.AirflowUI("http://127.0.0.1:8080", "admin", "Sup3r-s3cret",
                              tmp_path / "airflow" / airflow_ui.PASSWORD_FILE, tmp_path,
                              tmp_path / "standalone.log", process=None)
    text = airflow_ui.banner(ui, s)
    assert "Sup3r-s3cret" not in text
    assert str(ui.password_file) in text
    s = s.replace(database_url="postgresql://recs:hunter2@db.example:5432/recs")
    assert "hunter2" not in airflow_ui.banner(ui, s)


@pytest.mark.airflow
def test_airflow_metadata_on_another_database_is_migrated(settings, dsn, monkeypatch):
    """Before: the marker of the first database (the demo's) made `recs airflow ...`
    skip `airflow db migrate` on the next one ('Database migration required').
    A real migration of a fresh database: about 6 s here (measured with
    `recs airflow dags list` on a new cluster: 6.5 s in all)."""
    from cli.airflow_env import metadata_migrated, migration_marker
    from cli.main import airflow_db_ready
    from core.db import sqlalchemy_url

    airflow_db_ready(settings)  # the first database (the instance's "airflow")
    assert metadata_migrated(settings)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sqlalchemy_url(dsn))
    assert not migration_marker(settings).exists()
    airflow_db_ready(settings)
    assert _one(dsn, "SELECT count(*) FROM alembic_version") == (1,)
    assert metadata_migrated(settings)


def test_airflow_migration_marker_is_per_database(tmp_path, dsn, monkeypatch):
    """Before: one marker per checkout, so after `make demo` a RECS_DATABASE_URL naming
    another server skipped `airflow db migrate` and Airflow failed with 'Database
    migration required'."""
    from cli.airflow_env import metadata_migrated, migration_marker

    a = settings_mod.load(env={}, home=tmp_path)
    b = a.replace(database_url="postgresql://recs:pw@elsewhere:5432/recs")
    c = a.replace(database_url="postgresql://recs:other@elsewhere:5432/recs")
    assert migration_marker(a) != migration_marker(b)
    assert migration_marker(b) == migration_marker(c)  # the password is not the key
    assert "pw" not in migration_marker(b).name
    # A marker alone is not enough: the database must hold Airflow's version table.
    from core.db import sqlalchemy_url

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sqlalchemy_url(dsn))
    marker = migration_marker(a)  # a database without Airflow's tables
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("x")
    assert not metadata_migrated(a)


@pytest.mark.slow
@pytest.mark.faults
def test_trust_cluster_is_upgraded_in_place_without_losing_data():
    """A cluster initialised as before this change (trust, objects owned by the
    bootstrap superuser) keeps its rows; start() turns on passwords and hands the
    objects to the pipeline."""
    home = Path(tempfile.mkdtemp(prefix="recs-upgrade-"))
    os.chmod(home, 0o755)
    with socket_port() as port:
        s = settings_mod.load(env={}, home=home, pg_port=port)
    try:
        s.pg_dir.mkdir(parents=True)
        localpg.socket_dir(s).mkdir()
        if os.geteuid() == 0:
            shutil.chown(s.pg_dir, "postgres", "postgres")
            shutil.chown(localpg.socket_dir(s), "postgres", "postgres")
        r = localpg._run([localpg.find_bin("initdb"), "-D", str(localpg.data_dir(s)), "-U",
                          "recs", "--auth=trust", "--encoding=UTF8", "--locale=C"])
        assert r.returncode == 0, r.stderr
        log = s.pg_dir / "postgres.log"
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        r = localpg._run([localpg.find_bin("pg_ctl"), "start", "-D", str(localpg.data_dir(s)),
                          "-l", str(log), "-o", f"-p {port} -k {localpg.socket_dir(s)}",
                          "-w"])
        assert r.returncode == 0, r.stderr
        old = psycopg2.connect(host="127.0.0.1", port=port, user="recs", dbname="postgres",
                               passfile=os.devnull + "-none")  # trust: no password
        old.autocommit = True
        old.cursor().execute("CREATE DATABASE recs")
        old.close()
        old = psycopg2.connect(host="127.0.0.1", port=port, user="recs", dbname="recs",
                               passfile=os.devnull + "-none")
        with old, old.cursor() as cur:
            cur.execute("CREATE TABLE kept (id BIGSERIAL PRIMARY KEY, v TEXT)")
            cur.execute("INSERT INTO kept (v) VALUES ('a'), ('b')")
        old.close()

        localpg.start(s)

        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=port, user="recs", dbname="recs",
                             passfile=os.devnull + "-none")
        conn = psycopg2.connect(s.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_user, array_agg(v ORDER BY id) FROM kept")
            assert cur.fetchone() == (PIPELINE_ROLE, ["a", "b"])
            cur.execute("INSERT INTO kept (v) VALUES ('c')")  # owns the sequence too
            cur.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                        "WHERE relname IN ('kept', 'kept_id_seq')")
            assert {r[0] for r in cur.fetchall()} == {PIPELINE_ROLE}
        conn.close()
        localpg.start(s)  # again: nothing to do, nothing breaks
    finally:
        localpg.stop(s, mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


class socket_port:
    """A free TCP port on 127.0.0.1 (context manager)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_role_url_names_the_role_and_no_password(dsn):
    url = role_url(dsn, READER_ROLE)
    assert url.startswith(f"postgresql://{READER_ROLE}@") and "passfile=" in url
    assert _one(url, "SELECT current_user") == (READER_ROLE,)
