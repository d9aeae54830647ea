"""Environment for running Airflow against the project's DAGs and database."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.settings import PROJECT_ROOT, Settings


def metadata_url(s: Settings) -> str:
    """Airflow's metadata database: database ``airflow`` on the project's server."""
    parts = urlsplit(s.dsn.replace("postgresql+psycopg2://", "postgresql://"))
    return urlunsplit(("postgresql+psycopg2", parts.netloc, "/airflow", parts.query, ""))


def metadata_conn(s: Settings) -> str:
    """The metadata database Airflow will use: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN when
    set, else :func:`metadata_url`."""
    return os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or metadata_url(s)


def migration_marker(s: Settings) -> Path:
    """The file recording that Airflow's metadata database was migrated: one per Airflow
    version and per metadata database (a hash of its URL without any password), so that
    pointing RECS_DATABASE_URL at another server migrates that one."""
    from importlib.metadata import version

    from core.db import redact

    key = hashlib.sha256(redact(metadata_conn(s)).encode()).hexdigest()[:12]
    return s.airflow_home / f".migrated-{version('apache-airflow')}-{key}"


def metadata_migrated(s: Settings) -> bool:
    """True when the marker exists and the database holds Airflow's alembic_version row
    (a database dropped and re-created under the same URL is migrated again)."""
    if not migration_marker(s).exists():
        return False
    import psycopg2

    from core.db import libpq_dsn

    try:
        conn = psycopg2.connect(libpq_dsn(metadata_conn(s)), connect_timeout=10)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
            if not cur.fetchone()[0]:
                return False
            cur.execute("SELECT count(*) FROM alembic_version")
            return cur.fetchone()[0] > 0
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def environ(s: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) plus what Airflow needs; set values win."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    if not env.get("PATH", "").startswith(venv_bin):
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    defaults = {
        "AIRFLOW_HOME": str(s.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url(s),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark",
                                                  "host": s.spark_master}),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env
