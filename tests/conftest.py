"""Shared fixtures: a real private Postgres for the suite, a fresh database per test.

The suite's instance lives under ``var/test/pg-<port>`` on its own port
(RECS_TEST_PG_PORT, default 54341) so that it never touches the demo's data. Each test that asks for
``dsn`` gets a new, migrated database owned by the pipeline role, dropped afterwards;
``dsn`` connects as ``recs_pipeline`` and :func:`role_url` gives the same database as
another role. Passwords are read by libpq from the instance's password file (named in
the URL) and, for connections that name only host, port and user, from the checkout's
``var/pgpass`` (PGPASSFILE, set below), where every private instance records its own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from core import localpg, migrate
from core import settings as settings_mod
from core.settings import PIPELINE_ROLE, PROJECT_ROOT

# Connections by host, port and user alone (tests' own instances) find their password.
os.environ["PGPASSFILE"] = str(localpg.REGISTRY)
# Readers started by tests (in process or under gunicorn) serve lists in their computed
# order: exploration (a random shuffle of the top items, issue 13) is off unless a test
# turns it on (tests/test_experiments_serve.py does).
os.environ.setdefault("RECS_EXPLORATION_RATE", "0")

ML_SMALL = (PROJECT_ROOT.parent / "shared" / "data" / "ml-latest-small").resolve()
TEST_PG_PORT = int(os.environ.get("RECS_TEST_PG_PORT", "54341"))
# One instance per port, so that concurrent suites on one machine can keep apart.
TEST_HOME = PROJECT_ROOT / "var" / "test" / f"pg-{TEST_PG_PORT}"


def pytest_configure(config):
    for name, text in [
        ("spark", "starts a Spark session (slow JVM start)"),
        ("airflow", "runs Airflow commands"),
        ("slow", "takes more than a few seconds"),
        ("integration", "runs several real components together over HTTP"),
        ("faults", "stops and starts a Postgres instance"),
        ("browser", "drives headless Chromium (Debian's /usr/bin/chromium)"),
    ]:
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="session")
def pg_instance():
    """Settings of the suite's private Postgres, started once per session."""
    s = settings_mod.load(env={}, home=TEST_HOME, pg_port=TEST_PG_PORT,
                           exploration_rate=0.0)
    was_running = localpg.is_running(s)
    localpg.start(s)
    yield s
    if not was_running:
        localpg.stop(s)


def _admin(s: settings_mod.Settings):
    """The administrator (bootstrap superuser) on database postgres, autocommit."""
    conn = localpg.connect_as(s)
    conn.autocommit = True
    return conn


def role_url(dsn: str, role: str) -> str:
    """``dsn`` (a test database's URL) as ``role`` (recs_reader, recs_analyst, ...)."""
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


@pytest.fixture
def dsn(pg_instance):
    """URL of a fresh database with the schema applied; dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    conn = _admin(pg_instance)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER {PIPELINE_ROLE}')
    url = pg_instance._private_url(PIPELINE_ROLE, name)
    migrate.apply(url)
    yield url
    from core import db

    engine = db._engines.pop(url, None)
    if engine is not None:
        engine.dispose()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture
def settings(dsn, tmp_path, monkeypatch):
    """Process settings pointing at the test database and a temporary home and lake."""
    monkeypatch.setenv("RECS_DATABASE_URL", dsn)
    monkeypatch.setenv("RECS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(settings_mod, "_cached", None)
    yield settings_mod.get()
    settings_mod._cached = None


@pytest.fixture(scope="session")
def ml_small() -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip(f"MovieLens ml-latest-small not found at {ML_SMALL} "
                    "(it lives in the project's shared data folder, not in the repo)")
    return ML_SMALL


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster (a master and two one-core workers, each with its own
    temporary folders) for the session; stopped at the end (tests/spark_cluster.py)."""
    from tests.spark_cluster import standalone

    with standalone(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
