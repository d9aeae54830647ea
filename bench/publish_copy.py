"""Publish COPY throughput against `psql \\copy` of the same rows, in the same run.

Builds seeded per-user lists (default 20,000 users x 100 items, the shape the daily DAG
publishes), COPYs them into a scratch table through the publish step's own code path
(jobs/publish.py: frame -> COPY text -> COPY FROM STDIN), then loads the very same rows
with `psql \\copy` from a file into a second scratch table. Then the path a daily publish
of many users takes: the same rows as a folder of Parquet part files (the Spark funnel's
output), streamed a batch at a time (jobs/publish.py:list_batches) over one COPY
connection, and over ``--streams`` connections (one process each) into a table
hash-partitioned by user (jobs/publish.py:copy_streams). Prints rows/s of each and the
ratios to ``psql \\copy``.

    .venv/bin/python -m bench.publish_copy [--users 20000] [--streams 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import pandas as pd

from core import db
from core import settings as settings_mod
from jobs.publish import LIST_TABLES, _copy_frame, _copy_lake_lists, copy_streams, list_units


def lists(n_users: int, k: int, seed: int = 42) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = [rng.choice(50_000, size=k, replace=False).astype("int64") for _ in range(n_users)]
    return pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype="int64"),
        "items": items,
        "scores": [np.sort(rng.random(k).astype("float32"))[::-1] for _ in range(n_users)],
        "reasons": [[f"Because you watched Title {j}" for j in r[:k] % 97] for r in items],
        "reason_item_ids": [r[::-1].copy() for r in items],
        "history_tail": [r[:10].copy() for r in items],
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--parts", type=int, default=8, help="Parquet part files of the lists")
    args = p.parse_args()
    s = settings_mod.get()
    frame = lists(args.users, args.k)
    columns = LIST_TABLES["recommendations"]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            for t in ("bench_copy_ours", "bench_copy_psql"):
                cur.execute(f"DROP TABLE IF EXISTS {t}")
                cur.execute(f"CREATE TABLE {t} (LIKE recommendations)")
        with conn, conn.cursor() as cur:
            t0 = time.perf_counter()
            n = _copy_frame(cur, "bench_copy_ours", columns, frame, "bench", now)
        ours = time.perf_counter() - t0
        # The same rows as a COPY text file, for psql.
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".copy") as fh:
            path = fh.name
        with conn, conn.cursor() as cur, open(path, "w") as out:
            cur.copy_expert("COPY bench_copy_ours TO STDOUT", out)
        t0 = time.perf_counter()
        subprocess.run(["psql", db.libpq_dsn(s.dsn), "-q", "-c",
                        f"\\copy bench_copy_psql FROM '{path}'"], check=True,
                       env={**os.environ})
        theirs = time.perf_counter() - t0
        size = os.path.getsize(path)
        os.unlink(path)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM bench_copy_ours), "
                        "(SELECT count(*) FROM bench_copy_psql)")
            counts = cur.fetchone()
            for t in ("bench_copy_ours", "bench_copy_psql"):
                cur.execute(f"DROP TABLE {t}")
    finally:
        conn.close()
    assert counts == (n, n), counts
    lake_dir = tempfile.mkdtemp(prefix="recs-bench-lists-")
    for k, part in enumerate(np.array_split(np.arange(len(frame)), args.parts)):
        frame.iloc[part].to_parquet(f"{lake_dir}/part-{k:05d}.parquet", index=False)
    units = list_units(lake_dir)
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_copy_lake, bench_copy_streams")
            cur.execute("CREATE TABLE bench_copy_lake (LIKE recommendations)")
            cur.execute("CREATE TABLE bench_copy_streams (LIKE recommendations) "
                        "PARTITION BY HASH (user_id)")
            for k in range(args.streams):
                cur.execute(f"CREATE TABLE bench_copy_streams_h{k} PARTITION OF "
                            f"bench_copy_streams FOR VALUES WITH (MODULUS {args.streams}, "
                            f"REMAINDER {k})")
        with conn, conn.cursor() as cur:
            t0 = time.perf_counter()
            n_lake = _copy_lake_lists(cur, "bench_copy_lake", units, frozenset(), "bench", now)
        one_stream = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_streams = copy_streams(s.dsn, "bench_copy_streams", units, frozenset(), "bench",
                                 now, args.streams)
        many = time.perf_counter() - t0
        with conn, conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM bench_copy_lake), "
                        "(SELECT count(*) FROM bench_copy_streams)")
            assert cur.fetchone() == (n, n)
            cur.execute("DROP TABLE bench_copy_lake, bench_copy_streams")
    finally:
        conn.close()
    assert n_lake == n_streams == n
    print(json.dumps({
        "lake_one_stream_rows_per_s": round(n / one_stream),
        f"lake_{args.streams}_streams_rows_per_s": round(n / many),
        "ratio_one_stream_over_psql": round((n / one_stream) / (n / theirs), 3),
        f"ratio_{args.streams}_streams_over_psql": round((n / many) / (n / theirs), 3),
        f"ratio_{args.streams}_streams_over_one_stream": round(one_stream / many, 3),
        "cpu_cores": os.cpu_count(),
    }, indent=2))
    print(json.dumps({
        "rows": n, "items_per_row": args.k, "copy_text_mb": round(size / 1e6, 1),
        "publish_copy_rows_per_s": round(n / ours), "publish_copy_s": round(ours, 2),
        "psql_copy_rows_per_s": round(n / theirs), "psql_copy_s": round(theirs, 2),
        "ratio_publish_over_psql": round((n / ours) / (n / theirs), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
