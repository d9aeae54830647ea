"""Ordered, recorded, re-runnable schema migrations from ``sql/NNN_name.sql``.

Each file runs once, in its own transaction, and is recorded in ``schema_migrations``
with its checksum. Re-running applies only new files; a recorded file whose text has
changed is an error (migrations are append-only: add a new file instead).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from core import db
from core.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, changed after it was applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path}: name must look like 001_some_name.sql")
        found.append(Migration(int(m.group(1)), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{sql_dir}: two migrations share a number")
    return found


def apply(dsn: str | None = None, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names of those applied now."""
    applied_now: list[str] = []
    with db.transaction(dsn) as cur:
        cur.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                         version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                         checksum TEXT NOT NULL,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())""")
    for mig in discover(sql_dir):
        with db.transaction(dsn) as cur:
            # Serialise concurrent migrators (two workers starting at once).
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('recs_migrate'))")
            cur.execute("SELECT checksum FROM schema_migrations WHERE version = %s",
                        (mig.version,))
            row = cur.fetchone()
            if row is not None:
                if row[0] != mig.checksum:
                    raise MigrationError(
                        f"{mig.path.name} was changed after it was applied; "
                        "add a new migration instead")
                continue
            try:
                cur.execute(mig.path.read_text())
            except Exception as exc:  # re-raised with the file named
                raise MigrationError(f"{mig.path.name}: {exc}") from exc
            cur.execute("INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)", (mig.version, mig.path.name, mig.checksum))
            applied_now.append(mig.path.name)
    return applied_now
