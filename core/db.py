"""Database access: one engine per process, raw psycopg2 connections for COPY.

Jobs use :func:`engine` (SQLAlchemy 2) for queries and :func:`raw_connection` for bulk
COPY. The reader keeps its own small pool (serve/store.py) with short timeouts.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator, Sequence

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine, create_engine

from core import settings as settings_mod

_engines: dict[str, Engine] = {}


def sqlalchemy_url(dsn: str) -> str:
    if dsn.startswith("postgres://"):
        dsn = "postgresql://" + dsn[len("postgres://"):]
    if dsn.startswith("postgresql://"):
        dsn = "postgresql+psycopg2://" + dsn[len("postgresql://"):]
    return dsn


def libpq_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg2://", "postgresql://")


def redact(dsn: str) -> str:
    """``dsn`` fit to print: any password in it (``user:secret@`` or ``password=``) is
    replaced by ``***``."""
    import re

    dsn = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", dsn)
    return re.sub(r"(?i)(\bpassword=)[^&\s]*", r"\1***", dsn)


def engine(dsn: str | None = None) -> Engine:
    """A pooled SQLAlchemy engine for ``dsn`` (the configured database by default)."""
    dsn = dsn or settings_mod.get().dsn
    if dsn not in _engines:
        _engines[dsn] = create_engine(sqlalchemy_url(dsn), pool_pre_ping=True, future=True)
    return _engines[dsn]


def connect(dsn: str | None = None, **kwargs) -> psycopg2.extensions.connection:
    """A new psycopg2 connection (caller closes it)."""
    return psycopg2.connect(libpq_dsn(dsn or settings_mod.get().dsn), **kwargs)


@contextlib.contextmanager
def transaction(dsn: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor inside one transaction: committed on success, rolled back on error."""
    conn = connect(dsn)
    try:
        with conn:  # commits or rolls back
            with conn.cursor() as cur:
                yield cur
    finally:
        conn.close()


@contextlib.contextmanager
def advisory_lock(conn: psycopg2.extensions.connection, name: str) -> Iterator[None]:
    """Hold the session advisory lock ``hashtext(name)`` on ``conn`` inside the block
    (waiting for it first); released, after a rollback of anything left open, on exit."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
    conn.commit()
    try:
        yield
    finally:
        if not conn.closed:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
            conn.commit()


def _copy_text(value: object) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, (list, tuple)):
        inner = ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
                         for v in value)
        value = "{" + inner + "}"
    s = str(value)
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def rows_to_copy_buffer(rows: Iterable[Sequence[object]]) -> io.StringIO:
    """Encode rows in Postgres COPY text format (tab-separated, ``\\N`` for NULL)."""
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_copy_text(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


def copy_rows(cur: psycopg2.extensions.cursor, table: str, columns: Sequence[str],
              rows: Iterable[Sequence[object]]) -> None:
    """COPY ``rows`` into ``table`` through ``cur`` (inside the caller's transaction)."""
    buf = rows_to_copy_buffer(rows)
    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
