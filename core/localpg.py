"""The project's private Postgres: initdb, start and stop an instance under ``var/pg``.

Used when ``RECS_DATABASE_URL`` is unset, so that the quickstart needs no server set up
by hand. ``initdb`` refuses to run as root; when this process is root the instance runs
as the unprivileged ``postgres`` system user (through ``runuser``).

Authentication is scram-sha-256 on 127.0.0.1 and on the socket (``pg_hba.conf`` is
written here). Each login role has a generated password kept in one libpq password file,
``var/pg/pgpass`` (mode 0600), which the connection URLs name with ``passfile=``: no
password is ever part of a URL, a log line or printed output. The roles:

- ``recs`` (ADMIN_ROLE): the bootstrap superuser; only this module (``recs db-up``) and
  the test fixtures use it, to create roles and databases.
- ``recs_pipeline``: owns the schema (jobs, loaders, migrations, Airflow); not a superuser.
- ``recs_reader``: the serving process (``Settings.reader_dsn``); grants in sql/009.
- ``recs_analyst``: the analyst views (``Settings.analyst_dsn``).

A cluster initialised before this (``trust``, everything owned by ``recs``) is upgraded
in place by :func:`start`: passwords set, ``pg_hba.conf`` rewritten and reloaded, and the
objects of the ``recs`` and ``airflow`` databases handed to ``recs_pipeline`` (the
bootstrap superuser cannot be demoted, so the owner is a new role).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from core.settings import (
    ADMIN_ROLE,
    ANALYST_ROLE,
    PIPELINE_ROLE,
    PROJECT_ROOT,
    READER_ROLE,
    Settings,
)

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
    "password_encryption": "'scram-sha-256'",
}
LOGIN_ROLES = (ADMIN_ROLE, PIPELINE_ROLE, READER_ROLE, ANALYST_ROLE)
HBA = """# Written by core/localpg.py: every connection proves a password (scram-sha-256).
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
"""
# Every private instance started from this checkout also records its passwords here,
# keyed by port, so that psql and the tests can connect by host, port and user alone
# (PGPASSFILE=var/pgpass psql -h 127.0.0.1 -p 54329 -U recs_pipeline recs).
REGISTRY = PROJECT_ROOT / "var" / "pgpass"
# The databases the project keeps on its private instance, owned by the pipeline.
DATABASES = ("recs", "airflow")


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


def passfile(s: Settings) -> Path:
    """The instance's libpq password file (one line per login role, mode 0600)."""
    return s.pg_dir / "pgpass"


def _read_passfile(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 5 and not line.startswith("#"):
                out[parts[3]] = parts[4]
    return out


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def passwords(s: Settings) -> dict[str, str]:
    """Each login role's password, generated (and kept in :func:`passfile`) when absent.
    Hex only, so that no character needs escaping in the pgpass format."""
    path = passfile(s)
    known = _read_passfile(path)
    if all(r in known for r in LOGIN_ROLES):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return known
    for role in LOGIN_ROLES:
        known.setdefault(role, secrets.token_hex(24))
    _write_private(path, "# host:port:database:user:password (libpq), kept by "
                         "core/localpg.py\n"
                   + "".join(f"*:*:*:{r}:{known[r]}\n" for r in LOGIN_ROLES))
    return known


def _register(s: Settings, pw: dict[str, str]) -> None:
    """Record this instance's passwords, keyed by its port, in the checkout's REGISTRY."""
    REGISTRY.parent.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY.parent / ".pgpass.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mine = [f"{host}:{s.pg_port}:*:{r}:{pw[r]}" for host in ("127.0.0.1", "localhost")
                for r in LOGIN_ROLES]
        lines = REGISTRY.read_text().splitlines() if REGISTRY.exists() else []
        if set(mine) <= set(lines):
            return
        others = [line for line in lines if line.split(":")[1:2] != [str(s.pg_port)]]
        _write_private(REGISTRY, "\n".join([*others, *mine]) + "\n")


def connect_as(s: Settings, role: str = ADMIN_ROLE, dbname: str = "postgres", **kw):
    """A psycopg2 connection to the private instance as ``role`` (its password read from
    :func:`passfile` by libpq). The caller closes it."""
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=s.pg_port, user=role, dbname=dbname,
                            passfile=str(passfile(s)), **kw)


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
    pw = passwords(s)
    # initdb reads the superuser's password from a file the server's user can read.
    fd, pwfile = tempfile.mkstemp(dir=s.pg_dir, prefix=".initdb-pw.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pw[ADMIN_ROLE] + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        r = _run([find_bin("initdb"), "-D", str(ddir), "-U", ADMIN_ROLE,
                  "--auth=scram-sha-256", f"--pwfile={pwfile}",
                  "--encoding=UTF8", "--locale=C"])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(pwfile)
    if r.returncode != 0:
        raise LocalPgError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
    with open(ddir / "postgresql.auto.conf", "a") as fh:
        for key, value in SERVER_CONF.items():
            fh.write(f"{key} = {value}\n")
    _write_hba(s)
    return True


def _write_hba(s: Settings) -> None:
    path = data_dir(s) / "pg_hba.conf"
    path.write_text(HBA)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    path.chmod(0o600)


def start(s: Settings, timeout: float = 60.0) -> None:
    """Start the instance (initialising it first), secure it (passwords, roles, owners;
    upgrading a cluster made before that) and create the databases. One process at a
    time per instance (two would generate different passwords)."""
    s.pg_dir.mkdir(parents=True, exist_ok=True)
    with open(s.pg_dir / ".start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _start(s, timeout)


def _start(s: Settings, timeout: float) -> None:
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
    pw = passwords(s)
    _wait_ready(s, timeout)
    _secure(s, pw)
    _register(s, pw)
    for name in DATABASES:
        ensure_database(s, name)


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
            connect_as(s, connect_timeout=2).close()
            return
        except psycopg2.OperationalError as exc:
            if "password" in str(exc) or "authentication" in str(exc):
                raise LocalPgError(
                    f"Postgres on port {s.pg_port} refused the administrator's password "
                    f"from {passfile(s)}: {exc}") from exc
            if time.monotonic() > deadline:
                raise LocalPgError(f"Postgres on port {s.pg_port} not ready: {exc}") from exc
            time.sleep(0.2)


def _hba_is_ours(s: Settings) -> bool:
    path = data_dir(s) / "pg_hba.conf"
    return path.exists() and path.read_text() == HBA


def _secure(s: Settings, pw: dict[str, str]) -> None:
    """Passwords for every login role, scram-sha-256 in pg_hba.conf, the roles, and the
    project's databases owned by the pipeline. Idempotent; upgrades a ``trust`` cluster
    (still answering without a password) in place."""
    from psycopg2.extensions import encrypt_password

    conn = connect_as(s)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET password_encryption = 'scram-sha-256'")
            cur.execute("SELECT pg_reload_conf()")
            for role in LOGIN_ROLES:
                verifier = encrypt_password(pw[role], role, conn, "scram-sha-256")
                cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
                row = cur.fetchone()
                attrs = "LOGIN" if role == ADMIN_ROLE else \
                    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                if row is None:
                    cur.execute(f"CREATE ROLE {role} {attrs} PASSWORD %s", (verifier,))
                elif not _verifies(row[0], pw[role]):
                    cur.execute(f"ALTER ROLE {role} {attrs} PASSWORD %s", (verifier,))
                elif role != ADMIN_ROLE:
                    cur.execute(f"ALTER ROLE {role} {attrs}")
            # The nearline watermark (jobs/nearline.py:safe_until) must see when other
            # roles' transactions (the reader's event inserts) started: pg_stat_activity
            # shows that only to the same role or pg_read_all_stats (read-only statistics).
            cur.execute(f"GRANT pg_read_all_stats TO {PIPELINE_ROLE}")
    finally:
        conn.close()
    if not _hba_is_ours(s):
        _write_hba(s)
        conn = connect_as(s)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()


def _verifies(stored: str | None, password: str) -> bool:
    """Whether a SCRAM verifier from pg_authid matches ``password``."""
    import base64
    import hashlib
    import hmac

    if not stored or not stored.startswith("SCRAM-SHA-256$"):
        return False
    try:
        head, keys = stored[len("SCRAM-SHA-256$"):].split("$", 1)
        iterations, salt = head.split(":", 1)
        stored_key, _server_key = keys.split(":", 1)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                     int(iterations))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        return hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest())
                                   .decode(), stored_key)
    except (ValueError, TypeError):
        return False


# Hands every object of the current database that the administrator owns to the
# pipeline role (the bootstrap superuser cannot be demoted, and REASSIGN OWNED refuses it
# because it owns the system catalogs). Tables before sequences: a sequence owned by a
# column follows its table.
_HAND_OVER = """
DO $$
DECLARE
    r RECORD;
    admin OID := (SELECT oid FROM pg_roles WHERE rolname = %(admin)s);
BEGIN
    FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = admin AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%' LOOP
        EXECUTE format('ALTER %%s %%s OWNER TO %%I',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                       r.name, %(owner)s);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = admin AND c.relkind = 'S'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER SEQUENCE %%s OWNER TO %%I', r.name, %(owner)s);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proowner = admin
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER ROUTINE %%s OWNER TO %%I', r.name, %(owner)s);
    END LOOP;
    FOR r IN SELECT t.oid::regtype AS name FROM pg_type t
             JOIN pg_namespace n ON n.oid = t.typnamespace
             LEFT JOIN pg_class c ON c.oid = t.typrelid
             WHERE t.typowner = admin AND (t.typtype IN ('e', 'd', 'r')
                                           OR (t.typtype = 'c' AND c.relkind = 'c'))
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER TYPE %%s OWNER TO %%I', r.name, %(owner)s);
    END LOOP;
    FOR r IN SELECT n.nspname AS name FROM pg_namespace n
             WHERE n.nspowner = admin AND n.nspname NOT IN ('pg_catalog',
                   'information_schema', 'public')
               AND n.nspname NOT LIKE 'pg_%%' LOOP
        EXECUTE format('ALTER SCHEMA %%I OWNER TO %%I', r.name, %(owner)s);
    END LOOP;
END;
$$;
"""


def hand_over(s: Settings, name: str) -> None:
    """Make the pipeline the owner of database ``name`` and of everything in it."""
    conn = connect_as(s)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                        (name,))
            row = cur.fetchone()
            if row is None:
                return
            if row[0] != PIPELINE_ROLE:
                cur.execute(f'ALTER DATABASE "{name}" OWNER TO {PIPELINE_ROLE}')
    finally:
        conn.close()
    conn = connect_as(s, dbname=name)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("""SELECT EXISTS (SELECT 1 FROM pg_class c
                           JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)
                             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                             AND n.nspname NOT LIKE 'pg_toast%%'
                           UNION ALL SELECT 1 FROM pg_proc p
                           JOIN pg_namespace n ON n.oid = p.pronamespace
                           WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = %s)
                             AND n.nspname NOT IN ('pg_catalog', 'information_schema'))""",
                        (ADMIN_ROLE, ADMIN_ROLE))
            if cur.fetchone()[0]:
                cur.execute(_HAND_OVER, {"admin": ADMIN_ROLE, "owner": PIPELINE_ROLE})
    finally:
        conn.close()


def ensure_database(s: Settings, name: str) -> None:
    """Database ``name`` exists, owned (with all its objects) by the pipeline role."""
    conn = connect_as(s)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}" OWNER {PIPELINE_ROLE}')
    finally:
        conn.close()
    hand_over(s, name)
