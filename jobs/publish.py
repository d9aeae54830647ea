"""Publish a version: checks, COPY and an atomic switch, then retire old versions.

Steps, all under one advisory lock (publishes are serialized): (1) checks on the frames
(coverage, no duplicates, no consumed items, finite scores) after block rules are applied;
(2) one transaction COPYs the lists into fresh tables (nothing a reader sees), checks the
row counts and switches: attaches the tables as the version's partitions (replacing that
version's old ones on a re-run) and points ``serving_state`` at it, each lock waited for
at most ``lock_timeout`` and retried, so readers never queue behind a waiting switch;
(3) after the switch, versions beyond ``keep`` (by logical date) are detached with
``DETACH PARTITION ... CONCURRENTLY`` and dropped. Versions only switch forward: a
version older than the live one (a backfill) is checked, not loaded. Readers see the old
version or the new one, never a half-loaded one; a failed publish leaves nothing staged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
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


# Rows of the recommendations read, checked and copied at a time: memory stays bounded
# whatever the number of users (the lists are streamed from the lake's Parquet).
BATCH_ROWS = 20_000


def list_units(path: str | Path) -> list[tuple[str, int]]:
    """(file, row group) of the recommendations in the lake (a Parquet file, or a folder
    of part files as the Spark funnel writes), in a stable order: the units of work of
    the checks and of the COPY streams."""
    import pyarrow.parquet as pq

    p = Path(path)
    files = [p] if p.is_file() else sorted(
        f for f in p.glob("*.parquet") if not f.name.startswith((".", "_")))
    return [(str(f), g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


def list_batches(units: list[tuple[str, int]], batch_rows: int = BATCH_ROWS
                 ) -> Iterator[pd.DataFrame]:
    """The rows of ``units`` as frames of at most ``batch_rows`` rows."""
    import pyarrow.parquet as pq

    for f, g in units:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, row_groups=[g]):
            yield batch.to_pandas()


class ListChecks:
    """The checks on the recommendations, fed a batch at a time (:meth:`add`): coverage
    of the users with pairs, no duplicate item in a list, finite scores, no consumed item.
    The consumed pairs are held as two sorted integer arrays (16 bytes a pair)."""

    def __init__(self, pairs: pd.DataFrame) -> None:
        u = pairs["user_id"].to_numpy("int64")
        i = pairs["item_id"].to_numpy("int64")
        order = np.lexsort((i, u))
        self._u, self._i = u[order], i[order]
        self.users = int(len(np.unique(self._u)))
        self.rows = self.with_list = self.duplicates = self.non_finite = self.leaked = 0

    def add(self, recs: pd.DataFrame) -> None:
        self.rows += len(recs)
        self.with_list += int((recs["items"].map(len) > 0).sum())
        self.duplicates += int(recs["items"].map(lambda a: len(a) != len(set(a.tolist())))
                               .sum())
        self.non_finite += int(recs["scores"].map(lambda a: not np.isfinite(a).all()).sum())
        lo = np.searchsorted(self._u, recs["user_id"].to_numpy("int64"), "left")
        hi = np.searchsorted(self._u, recs["user_id"].to_numpy("int64"), "right")
        for a, b, items in zip(lo, hi, recs["items"], strict=True):
            if b > a and np.isin(np.asarray(items, "int64"), self._i[a:b]).any():
                self.leaked += 1

    def result(self, sims: pd.DataFrame, min_coverage: float = 0.99) -> dict:
        """The figures, or PublishError naming the first check that failed."""
        coverage = self.with_list / max(self.users, 1)
        if coverage < min_coverage:
            raise PublishError(f"coverage {coverage:.3f} of users with a list is below "
                               f"{min_coverage}")
        sims_dup = int(sims["items"].map(lambda a: len(a) != len(set(a.tolist()))).sum())
        sims_bad = int(sims["scores"].map(lambda a: not np.isfinite(a).all()).sum())
        for name, dup, bad in (("recommendations", self.duplicates, self.non_finite),
                               ("similar_items", sims_dup, sims_bad)):
            if dup:
                raise PublishError(f"{name}: duplicate items in {dup} lists")
            if bad:
                raise PublishError(f"{name}: non-finite scores in {bad} lists")
        if self.leaked:
            raise PublishError(f"recommendations: {self.leaked} lists contain consumed items")
        return {"users": self.users, "users_with_list": self.with_list,
                "coverage": round(coverage, 4)}


def validate(recs: pd.DataFrame, sims: pd.DataFrame, pairs: pd.DataFrame,
             min_coverage: float = 0.99) -> dict:
    """Checks on the lists before anything is written (:class:`ListChecks` on one
    frame). Raises PublishError."""
    checks = ListChecks(pairs)
    checks.add(recs)
    return checks.result(sims, min_coverage)


def check_lake_lists(units: list[tuple[str, int]], sims: pd.DataFrame, pairs: pd.DataFrame,
                     blocked: frozenset[int]) -> tuple[dict, int]:
    """:class:`ListChecks` over the lake's recommendations a batch at a time, blocked
    items taken out first (as the COPY will); returns (figures, entries blocked) with the
    rows to publish under ``rows``."""
    from jobs import rules as rules_mod

    checks, removed = ListChecks(pairs), 0
    for batch in list_batches(units):
        batch, n = rules_mod.drop_blocked_lists(batch, blocked)
        removed += n
        checks.add(batch)
    out = checks.result(sims)
    out["rows"] = checks.rows
    return out, removed


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


def _copy_lake_lists(cur, table: str, units: list[tuple[str, int]], blocked: frozenset[int],
                     version: str, computed_at: dt.datetime) -> int:
    """COPY the lake's recommendations of ``units`` into ``table``, a batch at a time,
    without the blocked items."""
    from jobs import rules as rules_mod

    n = 0
    for batch in list_batches(units):
        batch, _ = rules_mod.drop_blocked_lists(batch, blocked)
        n += _copy_frame(cur, table, LIST_TABLES["recommendations"], batch, version,
                         computed_at)
    return n


def _copy_stream(dsn: str, table: str, units: list[tuple[str, int]], blocked: frozenset[int],
                 version: str, computed_at: dt.datetime) -> int:
    """One COPY stream of a parallel publish (a worker process): its share of the units
    into ``table`` on its own connection, committed when done."""
    conn = db.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            return _copy_lake_lists(cur, table, units, blocked, version, computed_at)
    finally:
        conn.close()


def copy_streams(dsn: str, table: str, units: list[tuple[str, int]], blocked: frozenset[int],
                 version: str, computed_at: dt.datetime, streams: int) -> int:
    """COPY the lake's recommendations into ``table`` over ``streams`` connections, each
    in its own process (the COPY text is encoded in Python: one process per stream),
    units dealt round-robin. Returns the rows copied."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [units[k::streams] for k in range(streams)]
    shares = [sh for sh in shares if sh]
    with ProcessPoolExecutor(len(shares),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_copy_stream, dsn, table, sh, blocked, version, computed_at)
                   for sh in shares]
        return sum(f.result() for f in futures)


def _stage_hashed(dsn: str, version: str, suffix: str, streams: int) -> str:
    """Create (and commit) the staged recommendations table of a parallel publish: hash
    sub-partitions by user, one per stream, marked as staged so that a publish that dies
    before its switch leaves them to the next publish's housekeeping. Returns its name."""
    new = f"recommendations_{suffix}"
    with db.transaction(dsn) as cur:
        cur.execute(f"CREATE TABLE {new} (LIKE recommendations INCLUDING DEFAULTS) "
                    "PARTITION BY HASH (user_id)")
        cur.execute(f"COMMENT ON TABLE {new} IS %s", (STAGED_COMMENT + version,))
        for k in range(streams):
            cur.execute(f"CREATE TABLE {new}_h{k} PARTITION OF {new} FOR VALUES WITH "
                        f"(MODULUS {streams}, REMAINDER {k})")
    return new


def _drop_staged(dsn: str, name: str) -> None:
    """Best effort: drop a staged table of a failed publish (housekeeping retries)."""
    try:
        with db.transaction(dsn) as cur:
            cur.execute("SET LOCAL lock_timeout = 2000")
            cur.execute(f"DROP TABLE IF EXISTS {name}")
    except Exception as exc:  # noqa: BLE001 - the next publish's housekeeping drops it
        log.warning("staged %s not dropped now (%s); the next publish drops it", name, exc)


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


class NotForward(PublishError):
    """The version is older (by logical date) than the live one: it is not switched to."""


PUBLISH_LOCK = "recs_publish"  # one publish at a time
STAGED_COMMENT = "recs publish: "  # COMMENT on the tables a publish creates (+ version)


def _versions_dates(cur, *versions: str | None) -> dict[str, dt.date | None]:
    cur.execute("SELECT model_version, logical_date FROM model_runs "
                "WHERE model_version = ANY(%s)", ([v for v in versions if v],))
    return dict(cur.fetchall())


def _backward(new_date: dt.date | None, live_date: dt.date | None) -> bool:
    """Whether switching from a live version of ``live_date`` to one of ``new_date`` goes
    back in time (versions without a logical date are never judged backwards)."""
    return new_date is not None and live_date is not None and new_date < live_date


def run(version: str, *, lists: dict, trending_path: str, popularity_path: str,
        pairs_path: str, keep: int = 2, dsn: str | None = None,
        lake_root: Path | None = None, lock_timeout_ms: int | None = None,
        switch_budget_s: float | None = None, retire_wait_s: float | None = None) -> dict:
    """Publish ``version``: checks, COPY, switch (only forward), then retire old versions.

    A version whose logical date is older than the live version's (a backfill) is checked
    but not loaded nor switched to: it stays 'evaluated' with a message saying so, and
    nothing live changes. Settings give the lock timeout, switch budget and retire wait
    when the arguments are None.
    """
    from core import settings as settings_mod
    from jobs import rules as rules_mod

    s = settings_mod.get()
    lock_timeout_ms = s.publish_lock_timeout_ms if lock_timeout_ms is None else lock_timeout_ms
    switch_budget_s = s.publish_switch_budget_s if switch_budget_s is None \
        else switch_budget_s
    retire_wait_s = s.publish_retire_wait_s if retire_wait_s is None else retire_wait_s
    t0 = time.perf_counter()
    units = list_units(lists["recommendations"])
    sims = pd.read_parquet(lists["similar"])
    trending = _trending_frame(pd.read_parquet(trending_path))
    pairs = pd.read_parquet(pairs_path, columns=["user_id", "item_id"])
    computed_at = dt.datetime.now(dt.UTC)
    suffix = _suffix(version)
    conn = db.connect(dsn)
    copied: dict[str, int] = {}
    copy_s = 0.0
    staged, switched, streams = None, False, 1
    try:
        with db.advisory_lock(conn, PUBLISH_LOCK):
            # 0. What an earlier run left: pending detaches, detached tables, old versions
            # (housekeeping: waits no longer than a switch's lock).
            _retire(dsn or s.dsn, keep=keep, wait_s=lock_timeout_ms / 1000)
            with conn, conn.cursor() as cur:
                cur.execute("SELECT status FROM model_runs WHERE model_version = %s",
                            (version,))
                row = cur.fetchone()
                if row is None or row[0] not in ("evaluated", "published"):
                    raise PublishError(f"{version}: status {row[0] if row else 'missing'}; "
                                       "only an evaluated version that passed the gate is "
                                       "published")
                cur.execute("SELECT live_version FROM serving_state")
                live = cur.fetchone()[0]
                dates = _versions_dates(cur, version, live)
                blocked = rules_mod.blocked_items(conn, s.rules_file or None)
            if _backward(dates.get(version), dates.get(live)):
                checks, _ = check_lake_lists(units, sims, pairs, frozenset())
                checks.pop("rows")
                return _not_forward(dsn, version, live, dates, checks)
            # Block rules hold in every published list (they may have changed since the
            # lists were computed).
            sims, n_sims = rules_mod.drop_blocked_lists(sims, blocked)
            trending, n_trend = rules_mod.drop_blocked_lists(trending, blocked)
            checks, n_recs = check_lake_lists(units, sims, pairs, blocked)
            n_rows = checks.pop("rows")
            checks["blocked_removed"] = {"recommendations": n_recs, "similar_items": n_sims,
                                         "trending": n_trend}
            frames = {"similar_items": sims, "trending": trending}
            # Many users: the recommendations go over several COPY streams into hash
            # sub-partitions, committed (as staged tables no reader sees) before the
            # switch's transaction; few users: everything in that one transaction.
            wanted = s.publish_streams or min(8, max(1, (os.cpu_count() or 2) // 2))
            if wanted > 1 and n_rows >= s.publish_parallel_min_rows:
                streams = wanted
                staged = _stage_hashed(dsn or s.dsn, version, suffix, streams)
                t_copy = time.perf_counter()
                copied["recommendations"] = copy_streams(
                    dsn or s.dsn, staged, units, blocked, version, computed_at, streams)
                copy_s += time.perf_counter() - t_copy
            # 1. One transaction: COPY into fresh tables (nothing a reader can see), then
            # the switch. Any failure, or a lost connection, rolls all of it back.
            try:
                with conn, conn.cursor() as cur:
                    t_copy = time.perf_counter()
                    for table, columns in LIST_TABLES.items():
                        new = f"{table}_{suffix}"
                        if new != staged:
                            cur.execute(f"CREATE TABLE {new} (LIKE {table} "
                                        "INCLUDING DEFAULTS)")
                            cur.execute(f"COMMENT ON TABLE {new} IS %s",
                                        (STAGED_COMMENT + version,))
                            copied[table] = _copy_lake_lists(
                                cur, new, units, blocked, version, computed_at) \
                                if table == "recommendations" else \
                                _copy_frame(cur, new, columns, frames[table], version,
                                            computed_at)
                        cur.execute(f"ALTER TABLE {new} ADD CONSTRAINT {new}_v CHECK "
                                    f"(model_version = %s)", (version,))
                        cur.execute(f"ALTER TABLE {new} ADD PRIMARY KEY "
                                    f"(model_version, {KEYS[table]})")
                    copy_s += time.perf_counter() - t_copy
                    if copied["recommendations"] != n_rows:
                        raise PublishError("recommendations: rows copied differ from the "
                                           "rows checked")
                    for table in LIST_TABLES:
                        cur.execute(f"SELECT count(*) FROM {table}_{suffix}")
                        if cur.fetchone()[0] != copied[table]:
                            raise PublishError(f"{table}: row count differs from the frame")
                    # Popularity as of this version, for analysts and the catalog.
                    popularity = pd.read_parquet(popularity_path)
                    cur.execute("CREATE TEMP TABLE pop_stage (item_id BIGINT, "
                                "popularity FLOAT8) ON COMMIT DROP")
                    db.copy_rows(cur, "pop_stage", ["item_id", "popularity"],
                                 popularity.itertuples(index=False))
                    switch = _switch_with_retries(
                        cur, version, suffix, checks, lists, lock_timeout_ms,
                        switch_budget_s)
            except NotForward:
                return _not_forward(dsn, version, live, None, checks)
            switched = True
            # 2. Retire old versions after the switch, without blocking readers.
            retire = _retire(dsn or s.dsn, keep=keep, wait_s=retire_wait_s)
    finally:
        conn.close()
        if staged is not None and not switched:
            _drop_staged(dsn or s.dsn, staged)
    write_popular_snapshot(version, trending, lake_root or lake.root())
    rows = sum(copied.values())
    log.info("published %s: %s rows in %.1fs (COPY %.0f rows/s); %s", version, copied,
             time.perf_counter() - t0, rows / max(copy_s, 1e-9), retire)
    return {"version": version, "live": True, "rows": copied, "checks": checks,
            "copy_streams": streams,
            "switch": switch, "retired": retire["retired"], "retire_pending":
            retire["pending"], "copy_rows_per_s": round(rows / max(copy_s, 1e-9), 1)}


def _not_forward(dsn: str | None, version: str, live: str | None,
                 dates: dict | None, checks: dict) -> dict:
    """Record that ``version`` (older than the live one) was not switched to."""
    with db.transaction(dsn) as cur:
        if dates is None:
            cur.execute("SELECT live_version FROM serving_state")
            live = cur.fetchone()[0]
            dates = _versions_dates(cur, version, live)
        message = (f"not live: a backfill of {dates.get(version)}; the live version {live} "
                   f"is of {dates.get(live)} (versions only switch forward). Its lists are "
                   "in the lake; nothing was loaded")
        cur.execute("UPDATE model_runs SET message = %s, metrics = metrics || %s "
                    "WHERE model_version = %s",
                    (message, json.dumps({"publish": {**checks, "live": False}}), version))
    log.warning("%s: %s", version, message)
    return {"version": version, "live": False, "message": message, "checks": checks,
            "rows": {}, "retired": [], "retire_pending": []}


def _switch_with_retries(cur, version: str, suffix: str, checks: dict, lists: dict,
                         lock_timeout_ms: int, budget_s: float) -> dict:
    """The switch inside a savepoint, each lock waited for at most ``lock_timeout_ms``;
    on a lock timeout the savepoint is rolled back (releasing what it took, so readers
    never queue behind a waiting switch) and tried again after a back-off, for
    ``budget_s`` in all. Raises PublishError when the budget runs out (the transaction
    then rolls back: the old version stays live, nothing staged remains)."""
    import psycopg2.errors

    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        cur.execute("SAVEPOINT recs_switch")
        cur.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        try:
            out = _switch(cur, version, suffix, checks, lists)
        except psycopg2.errors.LockNotAvailable as exc:
            cur.execute("ROLLBACK TO SAVEPOINT recs_switch")
            waited = time.monotonic() - start
            if waited >= budget_s:
                raise PublishError(
                    f"{version}: the switch could not take its locks in {waited:.0f} s "
                    f"({tries} tries of {lock_timeout_ms} ms; RECS_PUBLISH_SWITCH_BUDGET_S"
                    f"={budget_s:g}): {str(exc).strip()}; the live version is unchanged"
                ) from None
            pause = min(0.25 * 2 ** (tries - 1), 10.0, max(budget_s - waited, 0.0))
            log.warning("%s: switch try %d hit the lock timeout (%s); again in %.2f s",
                        version, tries, str(exc).strip(), pause)
            time.sleep(pause)
            continue
        cur.execute("RELEASE SAVEPOINT recs_switch")
        cur.execute("SET LOCAL lock_timeout = 0")
        out["tries"] = tries
        out["seconds"] = round(time.monotonic() - start, 3)
        return out


def _switch(cur, version: str, suffix: str, checks: dict, lists: dict) -> dict:
    cur.execute("LOCK TABLE serving_state IN EXCLUSIVE MODE")
    cur.execute("SELECT live_version, previous_version FROM serving_state")
    live, previous = cur.fetchone()
    dates = _versions_dates(cur, version, live)
    if _backward(dates.get(version), dates.get(live)):
        raise NotForward(version)
    replaced = []
    for table, columns in LIST_TABLES.items():
        old = _partitions(cur, table, version)
        staged = f"{table}_{suffix}"
        if any(pending for _, pending in old):
            raise PublishError(f"{table}: a partition of {version} is being detached; "
                               "publish it again once its retirement has finished")
        if old:
            # A re-run of a version that has lists: replace its rows in place (row locks
            # only; a DETACH would wait for every reader of the table).
            part = old[0][0]
            cols = ", ".join(columns)
            cur.execute(f"DELETE FROM {part}")
            cur.execute(f"INSERT INTO {part} ({cols}) SELECT {cols} FROM {staged}")
            cur.execute(f"DROP TABLE {staged}")
            replaced.append(table)
        else:
            # SHARE UPDATE EXCLUSIVE on the parent: readers neither wait nor block it.
            cur.execute(f"ALTER TABLE {table} ATTACH PARTITION {staged} "
                        "FOR VALUES IN (%s)", (version,))
    if replaced:
        # The version's lists were rebuilt: nearline and hourly treat it as a new version
        # (their next runs catch it up), and a nearline window pending for it restarts.
        cur.execute("UPDATE pipeline_watermarks SET model_version = NULL, "
                    "details = details - 'pending' WHERE model_version = %s "
                    "OR details->'pending'->>'version' = %s", (version, version))
    new_previous = live if live != version else previous
    cur.execute("UPDATE serving_state SET live_version = %s, previous_version = %s, "
                "switched_at = now()", (version, new_previous))
    cur.execute("UPDATE model_runs SET status = 'published', published_at = now(), "
                "metrics = metrics || %s, artifacts = artifacts || %s "
                "WHERE model_version = %s",
                (json.dumps({"publish": {**checks, "live": True}}),
                 json.dumps({k: lists[k] for k in ("recommendations", "similar")
                             if k in lists}), version))
    cur.execute("UPDATE items i SET popularity = p.popularity FROM pop_stage p "
                "WHERE i.item_id = p.item_id AND i.popularity <> p.popularity")
    return {"previous": new_previous, "replaced_in_place": replaced}


def _partitions(cur, table: str, version: str | None = None) -> list[tuple[str, bool]]:
    """(partition name, detach pending) of ``table`` (holding ``version`` when given)."""
    cur.execute("""SELECT c.oid::regclass::text, i.inhdetachpending,
                          pg_get_expr(c.relpartbound, c.oid)
                   FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = %s::regclass ORDER BY 1""", (table,))
    rows = cur.fetchall()
    if version is None:
        return [(name, pending) for name, pending, _ in rows]
    return [(name, pending) for name, pending, bound in rows
            if bound == f"FOR VALUES IN ('{version}')"]


def _version_of(bound: str) -> str | None:
    prefix, end = "FOR VALUES IN ('", "')"
    if bound.startswith(prefix) and bound.endswith(end):
        return bound[len(prefix):-len(end)]
    return None


def retire(dsn: str | None = None, keep: int | None = None,
           wait_s: float | None = None) -> dict:
    """Finish pending detaches, drop left-over tables, retire versions beyond ``keep``."""
    from core import settings as settings_mod

    s = settings_mod.get()
    return _retire(dsn or s.dsn, keep=s.keep_versions if keep is None else keep,
                   wait_s=s.publish_retire_wait_s if wait_s is None else wait_s)


def _retire(dsn: str, *, keep: int, wait_s: float) -> dict:
    """Retire old versions without making any reader wait.

    In autocommit, each lock waited for at most ``wait_s``: (1) partitions left "detach
    pending" by an earlier run are finalized and dropped; (2) tables a publish created and
    that are no partition (detached, not dropped) are dropped; (3) versions beyond the
    newest ``keep`` by logical date (never the live or previous one) are detached with
    ``DETACH PARTITION ... CONCURRENTLY`` (it waits for the queries that use the table,
    without blocking new ones) and dropped, and marked 'retired' once all their lists are
    gone, with the variant versions (jobs/variants.py) of the versions not kept. A detach
    that runs out of time stays pending and is finished by the next run.
    """
    import psycopg2.errors

    conn = db.connect(dsn)
    conn.autocommit = True
    retired: list[str] = []
    pending: list[str] = []
    waiting: set[str] = set()  # tables with a detach pending (one at a time per table)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {max(1, int(wait_s * 1000))}")
            _retire_steps(cur, keep, retired, pending, waiting)
    except psycopg2.errors.LockNotAvailable as exc:
        # Even reading a partition's bound takes a lock: a table held exclusively (by
        # maintenance) stops the housekeeping, never the publish.
        log.warning("retiring old versions waits: %s; the next run goes on",
                    str(exc).strip())
        pending.append(f"(stopped: {str(exc).strip()})")
    finally:
        conn.close()
    return {"retired": retired, "pending": pending}


def _retire_steps(cur, keep: int, retired: list[str], pending: list[str],
                  waiting: set[str]) -> None:
    import psycopg2.errors

    # (1) pending detaches.
    for table in LIST_TABLES:
        for part, is_pending in _partitions(cur, table):
            if not is_pending:
                continue
            try:
                cur.execute(f"ALTER TABLE {table} DETACH PARTITION {part} FINALIZE")
                cur.execute(f"DROP TABLE IF EXISTS {part}")
            except (psycopg2.errors.LockNotAvailable,
                    psycopg2.errors.UndefinedTable) as exc:
                log.warning("%s: finishing the detach of %s waits: %s", table, part,
                            str(exc).strip())
                pending.append(part)
                waiting.add(table)
    # (2) tables a publish made that are no partition (detached, not dropped).
    cur.execute("""SELECT c.oid::regclass::text FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
                     AND NOT c.relispartition
                     AND obj_description(c.oid, 'pg_class') LIKE %s""",
                (STAGED_COMMENT + "%",))
    for (name,) in cur.fetchall():
        try:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        except psycopg2.errors.LockNotAvailable:
            pending.append(name)
    # (3) versions beyond the newest ``keep`` by logical date.
    cur.execute("SELECT live_version, previous_version FROM serving_state")
    live, previous = cur.fetchone()
    parts: dict[str, list[tuple[str, str]]] = {}
    for table in LIST_TABLES:
        cur.execute("""SELECT c.oid::regclass::text, pg_get_expr(c.relpartbound, c.oid)
                       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = %s::regclass AND NOT i.inhdetachpending""",
                    (table,))
        for name, bound in cur.fetchall():
            v = _version_of(bound)
            if v is not None:
                parts.setdefault(v, []).append((table, name))
    # Variant versions (jobs/variants.py) are not counted: each goes with its base.
    cur.execute("""SELECT model_version, params->>'base_version' FROM model_runs
                   WHERE kind = 'variant' AND (model_version = ANY(%s)
                                               OR status = 'published')""",
                (list(parts),))
    variants = dict(cur.fetchall())
    cur.execute("""SELECT model_version FROM model_runs
                   WHERE (model_version = ANY(%s) OR status = 'published')
                     AND kind IS DISTINCT FROM 'variant'
                   ORDER BY logical_date DESC NULLS LAST,
                            published_at DESC NULLS LAST, model_version DESC""",
                (list(parts),))
    versions = [v for (v,) in cur.fetchall()]
    # Lists without a model run.
    versions += sorted(set(parts) - set(versions) - set(variants))
    kept = set(versions[:keep]) | {live, previous}
    old = [v for v in versions[keep:] if v not in (live, previous)]
    old += sorted(v for v, base in variants.items() if base not in kept)
    for v in old:
        done = True
        for table, name in parts.get(v, []):
            if waiting:  # a query holds the tables: the next run goes on
                done = False
                break
            try:
                cur.execute(f"ALTER TABLE {table} DETACH PARTITION {name} "
                            "CONCURRENTLY")
                cur.execute(f"DROP TABLE IF EXISTS {name}")
            except (psycopg2.errors.LockNotAvailable,
                    psycopg2.errors.ObjectNotInPrerequisiteState) as exc:
                log.warning("%s: detaching %s waits (%s); the next run finishes it",
                            table, name, str(exc).strip())
                pending.append(name)
                waiting.add(table)
                done = False
        if done:
            cur.execute("UPDATE model_runs SET status = 'retired' "
                        "WHERE model_version = %s AND status = 'published'", (v,))
            retired.append(v)


def drop_partitions(cur, table: str, version: str) -> None:
    """Detach and drop ``table``'s partition(s) holding ``version`` inside the caller's
    transaction (takes ACCESS EXCLUSIVE on ``table``: for tests and maintenance, not for
    the publish path, which never does this while readers run)."""
    cur.execute("""SELECT c.relname FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = %s::regclass
                     AND pg_get_expr(c.relpartbound, c.oid) = %s""",
                (table, f"FOR VALUES IN ('{version}')"))
    for (old,) in cur.fetchall():
        cur.execute(f"ALTER TABLE {table} DETACH PARTITION {old}")
        cur.execute(f"DROP TABLE {old}")
