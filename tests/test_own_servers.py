"""Issue 14, item 3: the engine on servers it does not manage.

A second Postgres server, started by this test (initdb and pg_ctl on its own port, none
of the project's set-up: no roles of ours, no databases), set up the way a database
administrator would: a database ``shop`` owned by another role, a login role
``recs_runner`` that does not own it and is no superuser, may not create databases or
roles, with CONNECT and TEMPORARY on the database, USAGE and CREATE on its ``public``
schema and ``pg_read_all_stats``; the three roles of sql/009_roles.sql created
beforehand (the reader's and the analysts' with logins); Airflow's metadata in a
database ``airflow_meta`` of the administrator's choice, owned by another login role.

Then the whole flow, as documented in docs/tutorial.md section 9 and docs/operations.md
"Your own Postgres": `recs db-init` (refused with a clear message while the runner
lacks what it needs), the tutorial's CSVs loaded with the generic loader, `recs
pipeline` through Airflow, the lake on a path of its own (RECS_LAKE_ROOT), a request
served by the reader connected as recs_reader, and an analyst query as recs_analyst.
Spark runs on local[2] here; a standalone cluster is tests/test_spark_cluster.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
from psycopg2.extensions import encrypt_password

from core import localpg
from core import settings as settings_mod
from core.settings import PROJECT_ROOT
from tests.test_tutorial import free_port, recs_shim

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.spark,
              pytest.mark.slow]

DATA = PROJECT_ROOT / "docs" / "tutorial"
LOGINS = ("recs_runner", "recs_reader", "recs_analyst", "airflow_user")


class SecondServer:
    """A bare Postgres cluster under ``root`` on a free port; superuser ``recs`` (the
    administrator), its password in the cluster's own password file."""

    def __init__(self, root: Path):
        self.s = settings_mod.load(env={}, home=root, pg_port=free_port(),
                                        exploration_rate=0.0)
        self.port = self.s.pg_port

    def start(self) -> None:
        localpg.init(self.s)
        log = self.s.pg_dir / "postgres.log"
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        r = localpg._run([localpg.find_bin("pg_ctl"), "start", "-D",
                          str(localpg.data_dir(self.s)), "-l", str(log), "-o",
                          f"-p {self.port} -k {localpg.socket_dir(self.s)}", "-w",
                          "-t", "60"])
        assert r.returncode == 0, r.stderr + log.read_text()[-2000:]

    def stop(self) -> None:
        localpg.stop(self.s)

    def admin(self, dbname: str = "postgres"):
        conn = localpg.connect_as(self.s, dbname=dbname)
        conn.autocommit = True
        return conn

    def sql(self, query: str, dbname: str = "postgres", params=()):
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()


@pytest.fixture
def server():
    root = Path(tempfile.mkdtemp(prefix="recs-second-pg-"))
    os.chmod(root, 0o755)  # the postgres user must reach the cluster when run as root
    srv = SecondServer(root / "server")
    srv.start()
    srv.root = root
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)


def administrator_sets_up(srv: SecondServer, passfile: Path) -> None:
    """What a DBA does once (docs/operations.md, "Your own Postgres"), except the
    schema privileges, granted later by the test (see grant_schema)."""
    passwords = {role: os.urandom(12).hex() for role in LOGINS}
    passfile.write_text("".join(f"127.0.0.1:{srv.port}:*:{role}:{pw}\n"
                                for role, pw in passwords.items()))
    passfile.chmod(0o600)
    conn = srv.admin()
    with conn.cursor() as cur:
        for role in LOGINS:
            verifier = encrypt_password(passwords[role], role, conn, "scram-sha-256")
            cur.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "PASSWORD %s", (verifier,))
        cur.execute("CREATE ROLE recs_pipeline NOLOGIN")
        cur.execute("CREATE ROLE shop_owner NOLOGIN")
        cur.execute("CREATE DATABASE shop OWNER shop_owner")
        cur.execute("CREATE DATABASE airflow_meta OWNER airflow_user")
        cur.execute("GRANT CONNECT, TEMPORARY ON DATABASE shop TO recs_runner")
        cur.execute("GRANT pg_read_all_stats TO recs_runner")
    conn.close()
    # The shop's own data, in a schema of its own, which the engine must leave alone.
    srv.sql("CREATE SCHEMA sales AUTHORIZATION shop_owner; "
            "CREATE TABLE sales.orders (id int); ALTER TABLE sales.orders OWNER TO shop_owner",
            dbname="shop")


def grant_schema(srv: SecondServer) -> None:
    srv.sql("GRANT USAGE, CREATE ON SCHEMA public TO recs_runner", dbname="shop")


def url(srv: SecondServer, role: str, db: str, passfile: Path,
        scheme: str = "postgresql") -> str:
    return f"{scheme}://{role}@127.0.0.1:{srv.port}/{db}?passfile={passfile}"


def test_whole_flow_on_a_second_server_the_runner_does_not_own(server):
    home = server.root / "home"
    recs_shim(home / "bin")
    passfile = server.root / "pgpass"
    administrator_sets_up(server, passfile)
    lake = server.root / "shared" / "lake"
    bind = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RECS_", "AIRFLOW", "PG"))}
    env.update(RECS_HOME=str(home / "var"), RECS_LOG_LEVEL="WARNING",
               RECS_DATABASE_URL=url(server, "recs_runner", "shop", passfile),
               RECS_READER_DATABASE_URL=url(server, "recs_reader", "shop", passfile),
               RECS_ANALYST_DATABASE_URL=url(server, "recs_analyst", "shop", passfile),
               RECS_LAKE_ROOT=str(lake), RECS_SPARK_MASTER="local[2]",
               RECS_SERVE_BIND=bind, PYTHONPATH=str(PROJECT_ROOT),
               PATH=f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    airflow_conn = url(server, "airflow_user", "airflow_meta", passfile,
                       "postgresql+psycopg2")

    def recs(*argv: str, extra: dict | None = None, check: bool = True):
        r = subprocess.run([str(home / "bin" / "recs"), *argv], env={**env, **(extra or {})},
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
        if check:
            assert r.returncode == 0, (argv, r.stdout[-3000:], r.stderr[-5000:])
        return r

    # Refused, clearly, while the runner lacks what it needs: it may not create the
    # database 'airflow' ...
    r = recs("db-init", check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "may not create the database 'airflow'" in r.stderr
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in r.stderr
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = airflow_conn
    # ... nor create tables in the schema (CREATE not granted yet).
    r = recs("db-init", check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "permission denied for schema public" in r.stderr
    assert "Your own Postgres" in r.stderr and "Traceback" not in r.stderr
    grant_schema(server)

    try:
        out = recs("db-init").stdout
        assert "airflow_meta" in out and "Airflow metadata ready" in out, out
        assert recs("db-init").stdout.startswith("applied: nothing new")  # re-runnable
        # The runner owns the engine's tables; the database and the shop's data are
        # untouched; no database was created.
        assert server.sql("SELECT pg_get_userbyid(datdba) FROM pg_database "
                          "WHERE datname = 'shop'") == [("shop_owner",)]
        assert server.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'",
                          dbname="shop") == [("recs_runner",)]
        assert server.sql("SELECT tableowner FROM pg_tables WHERE schemaname = 'sales'",
                          dbname="shop") == [("shop_owner",)]
        assert server.sql("SELECT datname FROM pg_database WHERE datname NOT IN "
                          "('postgres', 'template0', 'template1') ORDER BY 1") == [
            ("airflow_meta",), ("shop",)]
        assert server.sql("SELECT count(*) FROM alembic_version",
                          dbname="airflow_meta") == [(1,)]

        for kind in ("items", "users", "events"):
            recs("load", kind, str(DATA / f"{kind}.csv"))
        run = recs("pipeline")
        assert "published" in run.stdout, run.stdout
        # The run is in Airflow's metadata database of choice; the lake on its path.
        assert server.sql("SELECT state FROM dag_run WHERE dag_id = 'daily'",
                          dbname="airflow_meta") == [("success",)]
        assert (lake / "event_days").is_dir() and any(lake.rglob("*.parquet"))
        assert not (home / "var" / "lake").exists()

        key = recs("keys", "create", "own-servers", "--scope", "read").stdout.strip()
        recs("serve", "--daemon")
        r = requests.get(f"http://{bind}/api/v1/recommendations/user_42",
                         params={"limit": 5}, headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == "user_42" and body["fallback"] is False
        assert [x["item_id"][:5] for x in body["recommendations"]] == ["item_"] * 5
        # The reader holds its connections as recs_reader, not as the runner.
        assert server.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' "
                          "AND usename = 'recs_reader'")[0][0] > 0

        analyst = subprocess.run(
            ["psql", env["RECS_ANALYST_DATABASE_URL"], "-XAtc",
             "SELECT count(DISTINCT user_id) FROM live_recommendations"],
            capture_output=True, text=True, timeout=60)
        assert analyst.returncode == 0 and int(analyst.stdout) == 150, analyst.stderr
        denied = subprocess.run(["psql", env["RECS_ANALYST_DATABASE_URL"], "-XAtc",
                                 "SELECT count(*) FROM api_keys"],
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0 and "permission denied" in denied.stderr
    finally:
        recs("stop", check=False)
    assert json.loads(r.text)["model_version"]  # a published version answered
