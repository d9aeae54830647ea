"""Publish a version: COPY its lists into fresh partitions, validate, switch atomically.

Steps: (1) checks on the frames (coverage, no duplicates, no consumed items, finite
scores); (2) COPY into new tables shaped like the parents; (3) checks in SQL on what
landed (row counts); (4) one transaction attaches the tables as the version's partitions
(replacing that version's old ones on a re-run), points ``serving_state`` at it, keeps the
previous version and drops versions older than ``keep``. Readers see the old version or
the new one, never a half-loaded one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from core import db, lake

log = logging.getLogger("recs.publish")

LIST_TABLES = {
    "recommendations": ["model_version", "user_id", "items", "scores", "reasons",
                        "reason_item_ids", "history_tail", "computed_at"],
    "similar_items": ["model_version", "item_id", "items", "scores", "reasons", "computed_at"],
    "trending": ["model_version", "list_name", "items", "scores", "reasons", "computed_at"],
}
KEYS = {"recommendations": "user_id", "similar_items": "item_id", "trending": "list_name"}


class PublishError(RuntimeError):
    """A version failed a publish check; nothing was switched."""


def validate(recs: pd.DataFrame, sims: pd.DataFrame, pairs: pd.DataFrame,
             min_coverage: float = 0.99) -> dict:
    """Checks on the lists before anything is written. Raises PublishError."""
    users = pairs["user_id"].nunique()
    with_list = int((recs["items"].map(len) > 0).sum())
    coverage = with_list / max(users, 1)
    if coverage < min_coverage:
        raise PublishError(f"coverage {coverage:.3f} of users with a list is below "
                           f"{min_coverage}")
    for name, frame in (("recommendations", recs), ("similar_items", sims)):
        dup = frame["items"].map(lambda a: len(a) != len(set(a.tolist())))
        if dup.any():
            raise PublishError(f"{name}: duplicate items in {int(dup.sum())} lists")
        bad = frame["scores"].map(lambda a: not np.isfinite(a).all())
        if bad.any():
            raise PublishError(f"{name}: non-finite scores in {int(bad.sum())} lists")
    consumed = pairs.groupby("user_id")["item_id"].apply(set)
    leaked = sum(1 for u, items in zip(recs["user_id"], recs["items"], strict=True)
                 if consumed.get(u) and not consumed[u].isdisjoint(items.tolist()))
    if leaked:
        raise PublishError(f"recommendations: {leaked} lists contain consumed items")
    return {"users": int(users), "users_with_list": with_list, "coverage": round(coverage, 4)}


def _trending_frame(lists: pd.DataFrame) -> pd.DataFrame:
    lists = lists.sort_values(["list_name", "rank"], kind="stable")
    grouped = lists.groupby("list_name", sort=True)
    return pd.DataFrame({
        "list_name": list(grouped.groups.keys()),
        "items": [g["item_id"].to_numpy("int64") for _, g in grouped],
        "scores": [g["score"].to_numpy("float32") for _, g in grouped],
        "reasons": [g["reason"].tolist() for _, g in grouped],
    })


def _copy_frame(cur, table: str, columns: list[str], frame: pd.DataFrame, version: str,
                computed_at: dt.datetime) -> int:
    def rows():
        for rec in frame.itertuples(index=False):
            values = rec._asdict()
            out = []
            for col in columns:
                if col == "model_version":
                    out.append(version)
                elif col == "computed_at":
                    out.append(computed_at.isoformat())
                else:
                    v = values[col]
                    out.append(v.tolist() if isinstance(v, np.ndarray) else v)
            yield out

    db.copy_rows(cur, table, columns, rows())
    return len(frame)


def _suffix(version: str) -> str:
    return version.lower().replace("-", "_") + "_" + uuid.uuid4().hex[:6]


def write_popular_snapshot(version: str, trending: pd.DataFrame, lake_root: Path) -> Path:
    """The reader's last-resort popular list, for when the database is down at start."""
    popular = trending[trending["list_name"] == "popular"]
    items = [{"item_id": int(i), "score": float(s)}
             for i, s in zip(popular["items"].iloc[0], popular["scores"].iloc[0], strict=True)]
    path = lake_root / "serving" / "popular.json"
    tmp = lake.atomic_file(path)
    tmp.write_text(json.dumps({"model_version": version, "items": items}))
    os.replace(tmp, path)
    return path


def run(version: str, *, lists: dict, trending_path: str, popularity_path: str,
        pairs_path: str, keep: int = 2, dsn: str | None = None,
        lake_root: Path | None = None) -> dict:
    t0 = time.perf_counter()
    recs = pd.read_parquet(lists["recommendations"])
    sims = pd.read_parquet(lists["similar"])
    trending = _trending_frame(pd.read_parquet(trending_path))
    pairs = pd.read_parquet(pairs_path, columns=["user_id", "item_id"])
    checks = validate(recs, sims, pairs)
    frames = {"recommendations": recs, "similar_items": sims, "trending": trending}
    computed_at = dt.datetime.now(dt.UTC)
    suffix = _suffix(version)
    conn = db.connect(dsn)
    copied = {}
    try:
        # 1. Load into fresh, unattached tables (nothing a reader can see yet).
        with conn, conn.cursor() as cur:
            cur.execute("SELECT status FROM model_runs WHERE model_version = %s", (version,))
            row = cur.fetchone()
            if row is None or row[0] not in ("evaluated", "published"):
                raise PublishError(f"{version}: status {row[0] if row else 'missing'}; only "
                                   "an evaluated version that passed the gate is published")
            t_copy = time.perf_counter()
            for table, columns in LIST_TABLES.items():
                new = f"{table}_{suffix}"
                cur.execute(f"CREATE TABLE {new} (LIKE {table} INCLUDING DEFAULTS)")
                copied[table] = _copy_frame(cur, new, columns, frames[table], version,
                                            computed_at)
                cur.execute(f"ALTER TABLE {new} ADD CONSTRAINT {new}_v CHECK "
                            f"(model_version = %s)", (version,))
                cur.execute(f"ALTER TABLE {new} ADD PRIMARY KEY (model_version, {KEYS[table]})")
            copy_s = time.perf_counter() - t_copy
            # 2. Check what landed.
            for table in LIST_TABLES:
                cur.execute(f"SELECT count(*) FROM {table}_{suffix}")
                if cur.fetchone()[0] != copied[table]:
                    raise PublishError(f"{table}: row count differs from the frame")
        # 3. Switch in one transaction.
        with conn, conn.cursor() as cur:
            cur.execute("LOCK TABLE serving_state IN EXCLUSIVE MODE")
            cur.execute("SELECT live_version, previous_version FROM serving_state")
            live, previous = cur.fetchone()
            for table in LIST_TABLES:
                drop_partitions(cur, table, version)  # a re-run of this version
                cur.execute(f"ALTER TABLE {table} ATTACH PARTITION {table}_{suffix} "
                            "FOR VALUES IN (%s)", (version,))
            new_previous = live if live != version else previous
            cur.execute("UPDATE serving_state SET live_version = %s, previous_version = %s, "
                        "switched_at = now()", (version, new_previous))
            cur.execute("UPDATE model_runs SET status = 'published', published_at = now(), "
                        "metrics = metrics || %s, artifacts = artifacts || %s "
                        "WHERE model_version = %s",
                        (json.dumps({"publish": checks}),
                         json.dumps({k: lists[k] for k in ("recommendations", "similar")
                                     if k in lists}), version))
            # Popularity as of this version, for analysts and the catalog.
            popularity = pd.read_parquet(popularity_path)
            cur.execute("CREATE TEMP TABLE pop_stage (item_id BIGINT, popularity FLOAT8) "
                        "ON COMMIT DROP")
            db.copy_rows(cur, "pop_stage", ["item_id", "popularity"],
                         popularity.itertuples(index=False))
            cur.execute("UPDATE items i SET popularity = p.popularity FROM pop_stage p "
                        "WHERE i.item_id = p.item_id AND i.popularity <> p.popularity")
            retired = _retire(cur, keep=keep, protect={version, new_previous})
    finally:
        conn.close()
    write_popular_snapshot(version, trending, lake_root or lake.root())
    rows = sum(copied.values())
    log.info("published %s: %s rows in %.1fs (COPY %.0f rows/s)", version, copied,
             time.perf_counter() - t0, rows / max(copy_s, 1e-9))
    return {"version": version, "rows": copied, "checks": checks, "retired": retired,
            "copy_rows_per_s": round(rows / max(copy_s, 1e-9), 1)}


def _retire(cur, keep: int, protect: set[str]) -> list[str]:
    """Drop the partitions of published versions beyond the newest ``keep``."""
    cur.execute("""SELECT model_version FROM model_runs WHERE status = 'published'
                   ORDER BY published_at DESC NULLS LAST, model_version DESC""")
    versions = [v for (v,) in cur.fetchall()]
    retired = [v for v in versions[keep:] if v not in protect]
    for v in retired:
        for table in LIST_TABLES:
            drop_partitions(cur, table, v)
        cur.execute("UPDATE model_runs SET status = 'retired' WHERE model_version = %s", (v,))
    return retired


def drop_partitions(cur, table: str, version: str) -> None:
    """Detach and drop ``table``'s partition(s) holding ``version``."""
    cur.execute("""SELECT c.relname FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = %s::regclass
                     AND pg_get_expr(c.relpartbound, c.oid) = %s""",
                (table, f"FOR VALUES IN ('{version}')"))
    for (old,) in cur.fetchall():
        cur.execute(f"ALTER TABLE {table} DETACH PARTITION {old}")
        cur.execute(f"DROP TABLE {old}")
