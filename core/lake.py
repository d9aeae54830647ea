"""Lake paths: Parquet datasets under one root, one folder per date, written atomically.

A dataset lives at ``<root>/<name>/dt=<YYYY-MM-DD>/``. :func:`atomic_dir` writes into a
temporary sibling and renames it into place, so a re-run of a date replaces that date
only and a reader never sees a half-written folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from core import settings as settings_mod


def root() -> Path:
    return Path(settings_mod.get().lake)


def partition(name: str, day: dt.date | str, base: Path | None = None) -> Path:
    """Folder of dataset ``name`` for ``day``."""
    day_s = day if isinstance(day, str) else day.isoformat()
    return (base or root()) / name / f"dt={day_s}"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_file(final: Path) -> Path:
    """A temporary path beside ``final``; call ``os.replace(tmp, final)`` when written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def write_cursor(cur, schema, path: Path, chunk: int, progress=None) -> int:
    """Write the rows of an executed cursor to the Parquet file ``path`` with pyarrow
    ``schema`` (columns in cursor order), ``chunk`` rows at a time; ``progress(n)`` after
    each chunk. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                break
            cols = list(zip(*rows, strict=True))
            writer.write_table(pa.table({f.name: pa.array(c, type=f.type)
                                         for f, c in zip(schema, cols, strict=True)},
                                        schema=schema))
            n += len(rows)
            if progress is not None:
                progress(n)
    return n
