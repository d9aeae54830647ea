"""Generic import throughput against `psql \\copy` of the same rows, in the same run.

Writes a seeded events CSV in a client's shape (string ids ``user_123`` / ``item_456``,
ISO-8601 times, a rating value on rating events), loads it with `recs load events`'s own
code (jobs/ingest/generic.py: parse, validate, map the ids, COPY into staging, insert
into the partitioned ``interactions``, users upserted) into a fresh database, then exports
the rows it stored and loads exactly those rows with `psql \\copy` into ``interactions``
of a second fresh database with the same schema and the same partitions. Prints rows/s of
each and the ratio (issue 14 asks for at least 0.5).

    .venv/bin/python -m bench.generic_import [--events 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.load import drop_database, fresh_database
from core import db, migrate
from core import settings as settings_mod
from core.constants import EVENT_TYPES
from jobs.ingest import generic

START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
TODAY = dt.date(2026, 12, 1)  # the loader's hot window ends here: fixed, not the clock
COLUMNS = 'event_id, user_id, item_id, event_type, rating, "timestamp", context'


def events_csv(path: Path, n: int, n_users: int, n_items: int, seed: int = 42) -> int:
    """A seeded events file of ``n`` rows over 90 days; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(np.array(EVENT_TYPES), size=n, p=[0.5, 0.35, 0.05, 0.1])
    ts = START + pd.to_timedelta(np.sort(rng.integers(0, 90 * 86400, n)), unit="s")
    value = np.where(kinds == "rating", rng.integers(1, 11, n) / 2, np.nan)
    frame = pd.DataFrame({
        "user_id": np.char.add("user_", rng.integers(1, n_users + 1, n).astype(str)),
        "item_id": np.char.add("item_", rng.zipf(1.3, n).clip(1, n_items).astype(str)),
        "event_type": kinds,
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "value": value,
    })
    frame.to_csv(path, index=False)
    return path.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=20_000)
    args = p.parse_args()
    s = settings_mod.get()
    ours_db = fresh_database(s, "bench_import_ours")
    psql_db = fresh_database(s, "bench_import_psql")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            migrate.apply(ours_db)
            migrate.apply(psql_db)
            src = Path(tmp) / "events.csv"
            size = events_csv(src, args.events, args.users, args.items)
            # Both databases get the partitions of the 90 days before either load is
            # timed: rows against rows (psql cannot make partitions; creating 60 tables
            # is schema work that a load of new days does once).
            lo, hi = START.date(), (START + dt.timedelta(days=90)).date()
            for url in (ours_db, psql_db):
                with db.transaction(url) as cur:
                    cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s, %s)",
                                (lo, hi, TODAY - dt.timedelta(days=generic.HOT_DAYS)))
            t0 = time.perf_counter()
            report = generic.load("events", src, dsn=ours_db, today=TODAY)
            ours = time.perf_counter() - t0
            # Exactly the rows the loader stored (internal ids, times), for psql.
            dump = Path(tmp) / "interactions.copy"
            with db.transaction(ours_db) as cur, open(dump, "w") as out:
                cur.copy_expert(f"COPY (SELECT {COLUMNS} FROM interactions) TO STDOUT", out)
            t0 = time.perf_counter()
            subprocess.run(["psql", db.libpq_dsn(psql_db), "-q", "-v", "ON_ERROR_STOP=1",
                            "-c", f"\\copy interactions ({COLUMNS}) FROM '{dump}'"],
                           check=True, env={**os.environ})
            theirs = time.perf_counter() - t0
            counts = []
            for url in (ours_db, psql_db):
                with db.transaction(url) as cur:
                    cur.execute("SELECT count(*) FROM interactions")
                    counts.append(cur.fetchone()[0])
        finally:
            for name in ("bench_import_ours", "bench_import_psql"):
                drop_database(s, name)
    n = report.rows
    assert counts == [n, n] and report.written == n, (counts, report)
    print(json.dumps({
        "rows": n, "csv_mb": round(size / 1e6, 1), "external_ids_mapped": report.mapped_ids,
        "recs_load_rows_per_s": round(n / ours), "recs_load_s": round(ours, 2),
        "psql_copy_rows_per_s": round(n / theirs), "psql_copy_s": round(theirs, 2),
        "ratio_recs_load_over_psql": round(theirs / ours, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
