"""The project's private Postgres: initdb, start and stop an instance under ``var/pg``.

Used when ``RECS_DATABASE_URL`` is unset, so that the quickstart needs no server set up
by hand. ``initdb`` refuses to run as root; when this process is root the instance runs
as the unprivileged ``postgres`` system user (through ``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from core.settings import Settings

BINARIES = ("initdb", "pg_ctl", "postgres")
SERVER_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    # Interactions are partitioned by day: a query over years of history locks many
    # partitions at once.
    "max_locks_per_transaction": "1024",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


class LocalPgError(RuntimeError):
    """The private Postgres could not be found, initialised or started."""


def find_bin(name: str) -> str:
    """Path of a Postgres server binary, from PATH or the Debian layout."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise LocalPgError(
        f"Postgres server binary {name!r} not found. Install it with "
        "'apt-get install postgresql' (Debian/Ubuntu) or set RECS_DATABASE_URL to an "
        "existing server."
    )


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_as_owner(cmd), capture_output=True, text=True, **kw)


def data_dir(s: Settings) -> Path:
    return s.pg_dir / "data"


def socket_dir(s: Settings) -> Path:
    return s.pg_dir / "run"


def is_running(s: Settings) -> bool:
    if not (data_dir(s) / "PG_VERSION").exists():
        return False
    r = _run([find_bin("pg_ctl"), "status", "-D", str(data_dir(s))])
    return r.returncode == 0


def init(s: Settings) -> bool:
    """Create the cluster if absent. Returns True when it was created now."""
    ddir = data_dir(s)
    if (ddir / "PG_VERSION").exists():
        return False
    s.pg_dir.mkdir(parents=True, exist_ok=True)
    socket_dir(s).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(s.pg_dir, "postgres", "postgres")
        shutil.chown(socket_dir(s), "postgres", "postgres")
    r = _run([find_bin("initdb"), "-D", str(ddir), "-U", "recs", "--auth=trust",
              "--encoding=UTF8", "--locale=C"])
    if r.returncode != 0:
        raise LocalPgError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
    with open(ddir / "postgresql.auto.conf", "a") as fh:
        for key, value in SERVER_CONF.items():
            fh.write(f"{key} = {value}\n")
    return True


def start(s: Settings, timeout: float = 60.0) -> None:
    """Start the instance (initialising it first) and create the databases."""
    init(s)
    if not is_running(s):
        log = s.pg_dir / "postgres.log"
        if not log.exists():
            log.touch()
            if os.geteuid() == 0:
                shutil.chown(log, "postgres", "postgres")
        opts = f"-p {s.pg_port} -k {socket_dir(s)}"
        r = _run([find_bin("pg_ctl"), "start", "-D", str(data_dir(s)), "-l", str(log),
                  "-o", opts, "-w", "-t", str(int(timeout))])
        if r.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise LocalPgError(f"pg_ctl start failed: {r.stderr.strip()}\n{tail}")
    _wait_ready(s, timeout)
    ensure_database(s, "recs")
    ensure_database(s, "airflow")


def stop(s: Settings, mode: str = "fast") -> None:
    """Stop the instance if it runs."""
    if is_running(s):
        r = _run([find_bin("pg_ctl"), "stop", "-D", str(data_dir(s)), "-m", mode, "-w"])
        if r.returncode != 0:
            raise LocalPgError(f"pg_ctl stop failed: {r.stderr.strip()}")


def _wait_ready(s: Settings, timeout: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=s.pg_port, user="recs",
                             dbname="postgres", connect_timeout=2).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise LocalPgError(f"Postgres on port {s.pg_port} not ready: {exc}") from exc
            time.sleep(0.2)


def ensure_database(s: Settings, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=s.pg_port, user="recs", dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
