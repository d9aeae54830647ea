"""Nearline: users with new events get their lists recomputed in the live version.

Every few minutes (dags/nearline.py) :func:`run` finds the users whose events arrived
since the ``nearline`` watermark, folds their user vectors in against the live version's
fixed ALS item factors (the per-user least-squares solve of Spark's implicit ALS,
``models/als.py``) and rebuilds their lists with the daily funnel's own code
(:func:`funnel_lists`): the version's item-side signals and trained artefacts, the
users' current histories (the new events included) and folded-in ALS vectors, the
version's ranker or the generator the gate chose, the same re-ranking, rules and
reasons. The rows replace those users' rows in the live version's partition of
``recommendations``. The rows, the users' vectors (``embeddings``) and the watermark
are written in one transaction: a failed run leaves the old lists and the old watermark,
and the next run reads the same events again.

Which events a run reads: ``ingested_at`` in ``(watermark, until]``. ``until`` is the end
of the run's data interval, lowered to the start of the oldest transaction still writing
(an event inserted by a transaction that has not committed yet carries an
``ingested_at`` from before its commit; cutting there means no event is skipped when it
commits later). Reads are also bounded by ``"timestamp" >= watermark - lookback`` so that
only the newest day partitions of ``interactions`` are scanned; an event that arrives
with a timestamp older than that is left to the next daily run.

When the live version changes (a daily publish), the next run also takes every user with
events from the new version's data end onwards, because the new version's lists were
computed without them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2.extras

from core import db

log = logging.getLogger("recs.nearline")

NAME = "nearline"
LOOKBACK = dt.timedelta(days=1)
USER_BATCH = 10_000
NEW_REASON_PREFIX = "New in "
# Taken by every transaction that rewrites rows of the live lists (nearline, hourly), so
# that neither overwrites the other's rows with a list it read before they changed.
LIVE_LISTS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('recs_live_lists'))"


# --- shared with jobs/hourly.py ---------------------------------------------------------

@dataclass(frozen=True)
class LiveVersion:
    """The live version and the artifacts its lists were computed from."""

    version: str
    logical_date: dt.date
    params: dict[str, Any]
    artifacts: dict[str, Any]
    model: str | None = None  # the gate's published choice (full_pipeline or a generator)

    @property
    def data_end(self) -> dt.datetime:
        """End (exclusive) of the events the version was trained on."""
        return dt.datetime.combine(self.logical_date + dt.timedelta(days=1), dt.time(),
                                   tzinfo=dt.UTC)

    @property
    def factors_dir(self) -> Path:
        return Path(self.artifacts["als"]) / "full"

    @property
    def index_dir(self) -> Path:
        return Path(self.artifacts["index"])

    @property
    def has_funnel(self) -> bool:
        """Whether the version records what its funnel needs (versions published before
        the gate chose are refreshed with ALS alone)."""
        need = ("pairs", "items", "two_tower", "covisit", "text", "ranker")
        return self.model is not None and all(self.artifacts.get(k) for k in need)

    def param(self, name: str, default: Any) -> Any:
        return self.params.get(name, default)


def live_version(cur) -> LiveVersion | None:
    """The live version, share-locked until the transaction ends (a publish waits)."""
    cur.execute("SELECT live_version FROM serving_state FOR SHARE")
    row = cur.fetchone()
    if row is None or row[0] is None:
        return None
    cur.execute("SELECT logical_date, params, artifacts, "
                "metrics->'published_model'->>'name' FROM model_runs "
                "WHERE model_version = %s", (row[0],))
    logical_date, params, artifacts, model = cur.fetchone()
    return LiveVersion(row[0], logical_date, params or {}, artifacts or {}, model)


def safe_until(cur, until: dt.datetime | None) -> dt.datetime:
    """``until`` (default: the database clock), lowered to the start of the oldest other
    transaction that has written something and not finished.

    Rows stamped by ``now()`` or ``clock_timestamp()`` inside such a transaction carry a
    time at or after its start but become visible only when it commits; everything
    stamped before the returned time is visible to statements that start after this one.
    Needs to see other sessions' ``xact_start`` (a superuser, the owner of those sessions,
    or a member of ``pg_read_all_stats``).
    """
    cur.execute("""
        SELECT least(coalesce(%s::timestamptz, clock_timestamp()), clock_timestamp(),
                     coalesce((SELECT min(xact_start) FROM pg_stat_activity
                               WHERE backend_xid IS NOT NULL
                                 AND datname = current_database()
                                 AND pid <> pg_backend_pid()), 'infinity'))""", (until,))
    return cur.fetchone()[0]


def read_watermark(cur, name: str) -> tuple[dt.datetime | None, str | None]:
    cur.execute("SELECT value, model_version FROM pipeline_watermarks WHERE name = %s",
                (name,))
    row = cur.fetchone()
    return (row[0], row[1]) if row else (None, None)


def write_watermark(cur, name: str, value: dt.datetime, version: str | None,
                    details: dict) -> None:
    cur.execute("""
        INSERT INTO pipeline_watermarks (name, value, model_version, details, updated_at)
        VALUES (%s, %s, %s, %s, now())
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value,
            model_version = EXCLUDED.model_version, details = EXCLUDED.details,
            updated_at = now()""",
                (name, value, version, psycopg2.extras.Json(details)))


def partition_of(cur, table: str, version: str) -> str:
    """The (quoted) name of ``table``'s partition that holds ``version``."""
    cur.execute("""SELECT c.oid::regclass::text FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = %s::regclass
                     AND pg_get_expr(c.relpartbound, c.oid) = %s""",
                (table, f"FOR VALUES IN ('{version}')"))
    row = cur.fetchone()
    if row is None:
        raise LookupError(f"{table} has no partition for the live version {version}")
    return row[0]


def upsert_lists(cur, table: str, key: str, version: str, rows: Sequence[tuple],
                 columns: Sequence[str]) -> int:
    """Replace rows (key, *columns) of the live version's partition of ``table``."""
    if not rows:
        return 0
    part = partition_of(cur, table, version)
    rows = sorted(rows, key=lambda r: r[0])  # rows locked in key order
    cols = ["model_version", key, *columns, "computed_at"]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in [*columns, "computed_at"])
    template = "(%s, " + ", ".join(["%s"] * (1 + len(columns))) + ", now())"
    psycopg2.extras.execute_values(
        cur,
        f"INSERT INTO {part} ({', '.join(cols)}) VALUES %s "
        f"ON CONFLICT (model_version, {key}) DO UPDATE SET {updates}",
        [(version, *r) for r in rows], template=template, page_size=1000)
    return len(rows)


def splice(items: list, scores: list, reasons: list, reason_ids: list | None, pos: int,
           entry: tuple, keep: int | None = None) -> None:
    """Insert ``entry`` (item, score, reason, reason_item_id) at ``pos`` in the parallel
    lists (in place), removing the item first if present; cut them to ``keep``."""
    item = entry[0]
    while item in items:
        i = items.index(item)
        for seq in (items, scores, reasons, reason_ids):
            if seq is not None:
                del seq[i]
    pos = max(0, min(pos, len(items)))
    items.insert(pos, entry[0])
    scores.insert(pos, entry[1])
    reasons.insert(pos, entry[2])
    if reason_ids is not None:
        reason_ids.insert(pos, entry[3])
    if keep is not None:
        for seq in (items, scores, reasons, reason_ids):
            if seq is not None:
                del seq[keep:]


def to_utc_iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


# --- the nearline step ------------------------------------------------------------------

def changed_users(cur, lo: dt.datetime | None, hi: dt.datetime, since_version_end:
                  dt.datetime | None, lookback: dt.timedelta = LOOKBACK) -> np.ndarray:
    """Users with events that arrived in ``(lo, hi]``, plus (after a version switch) users
    with events at or after ``since_version_end``. Literal bounds, so that the planner
    prunes day partitions."""
    users: set[int] = set()
    if lo is not None:
        cur.execute('SELECT DISTINCT user_id FROM interactions WHERE ingested_at > %s '
                    'AND ingested_at <= %s AND "timestamp" >= %s', (lo, hi, lo - lookback))
        users.update(u for (u,) in cur.fetchall())
    if since_version_end is not None:
        cur.execute('SELECT DISTINCT user_id FROM interactions WHERE "timestamp" >= %s '
                    'AND ingested_at <= %s', (since_version_end, hi))
        users.update(u for (u,) in cur.fetchall())
    return np.array(sorted(users), dtype="int64")


def user_events(cur, users: np.ndarray, hi: dt.datetime,
                window_start: dt.datetime | None) -> pd.DataFrame:
    """All events of ``users`` that arrived up to ``hi`` (within the version's window)."""
    frames = []
    for start in range(0, len(users), USER_BATCH):
        batch = [int(u) for u in users[start:start + USER_BATCH]]
        sql = ('SELECT user_id, item_id, event_type, rating, "timestamp" FROM interactions '
               'WHERE user_id = ANY(%s) AND ingested_at <= %s'
               + (' AND "timestamp" >= %s' if window_start else '')
               + ' ORDER BY user_id, item_id, "timestamp", event_id')
        cur.execute(sql, (batch, hi, window_start) if window_start else (batch, hi))
        frames.append(pd.DataFrame(cur.fetchall(), columns=["user_id", "item_id",
                                                            "event_type", "rating",
                                                            "timestamp"]))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["user_id", "item_id", "event_type", "rating", "timestamp"])
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    return out


def fold_in(pairs: pd.DataFrame, item_ids: np.ndarray, item_factors: np.ndarray,
            reg: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, user vectors) of the users in ``pairs`` with at least one item that has
    factors; items without factors (new since the version) are left out of the solve."""
    from models.als import solve_users

    pos = pd.Series(np.arange(len(item_ids)), index=item_ids)
    rows = pos.reindex(pairs["item_id"].to_numpy()).to_numpy()
    known = pairs.loc[~np.isnan(rows)].assign(row=rows[~np.isnan(rows)].astype("int64"))
    grouped = known.groupby("user_id", sort=True)
    user_ids = np.array(list(grouped.groups.keys()), dtype="int64")
    item_rows = [g["row"].to_numpy() for _, g in grouped]
    weights = [g["weight"].to_numpy() for _, g in grouped]
    vectors = solve_users(item_factors, item_rows, weights, reg, alpha).astype("float32")
    return user_ids, vectors


def keep_new_slots(lists: pd.DataFrame, old: dict[int, tuple], consumed: dict[int, set],
                   ) -> pd.DataFrame:
    """Carry "New in <category>" entries of the old rows over into the new lists, at their
    old positions, unless the user has consumed the item since."""
    out = []
    for rec in lists.itertuples(index=False):
        items, scores = rec.items.tolist(), rec.scores.tolist()
        reasons, rids = list(rec.reasons), rec.reason_item_ids.tolist()
        prev = old.get(rec.user_id)
        if prev is not None:
            keep = len(items)
            for pos, (item, score, reason, rid) in enumerate(zip(*prev, strict=False)):
                if (reason or "").startswith(NEW_REASON_PREFIX) and \
                        item not in consumed.get(rec.user_id, ()):
                    splice(items, scores, reasons, rids, pos, (item, score, reason, rid),
                           keep)
        out.append((rec.user_id, items, scores, reasons, rids, rec.history_tail.tolist()))
    return pd.DataFrame(out, columns=["user_id", "items", "scores", "reasons",
                                      "reason_item_ids", "history_tail"])


def funnel_lists(live: LiveVersion, pairs: pd.DataFrame, user_ids: np.ndarray,
                 vectors: np.ndarray, as_of: dt.datetime, top_k: int,
                 timings: dict | None = None) -> pd.DataFrame:
    """Lists of ``user_ids`` through the daily funnel of the live version.

    The item side (catalog, popularity, trending, EASE and item-kNN, co-visitation, text,
    two-tower item vectors) comes from the version's ``full`` fit and its training pairs,
    with the pairs of every user in ``pairs`` replaced by theirs (all their events now:
    a run passes every user of its window, so that a user's list does not depend on the
    chunk it was computed in); lists are made for ``user_ids``. Their ALS vectors are the
    folded-in ``vectors``, their two-tower vectors the version's (a user new since then
    has none: that generator then proposes nothing for them).
    """
    from core import settings as settings_mod
    from jobs import daily
    from jobs.configs import funnel_config
    from jobs.precompute import load_rules
    from jobs.train_als import Factors
    from models.funnel import build_signals, rank_users
    from models.generators import SOURCES
    from models.ranker import load as load_ranker
    from models.reasons import final_lists

    t0 = time.perf_counter()
    s = settings_mod.get()
    config = funnel_config(s)
    full = pd.read_parquet(live.artifacts["pairs"])
    full = pd.concat([full[~full["user_id"].isin(pairs["user_id"].unique())], pairs],
                     ignore_index=True)
    # The lake's microseconds and the database's timestamps as one UTC column.
    full["timestamp"] = pd.to_datetime(full["timestamp"], utc=True)
    items = pd.read_parquet(live.artifacts["items"])
    art = daily.fit_artifacts("full", live.artifacts["als"], live.artifacts["two_tower"],
                              live.artifacts["covisit"], live.artifacts["text"])
    art.als = Factors(user_ids, vectors, art.als.item_ids, art.als.item_factors)
    prefs, countries = daily.user_context(live.artifacts.get("users"))
    sig = build_signals(full, items, art, as_of=pd.Timestamp(as_of), config=config,
                        users=np.asarray(user_ids), preferences=prefs, countries=countries)
    t1 = time.perf_counter()
    rows = np.arange(sig.n_users)
    if live.model == "full_pipeline":
        ranked = rank_users(sig, rows, config, load_ranker(live.artifacts["ranker"]))
    elif live.model in SOURCES:
        ranked = rank_users(sig, rows, config, None, by=live.model,
                            keep=max(config.sizes.get(live.model), top_k))
    else:
        raise ValueError(f"{live.version}: unknown published model {live.model!r}")
    lists = final_lists(sig, ranked, items.set_index("item_id")["title"], top_k,
                        config=config.rerank, rules=load_rules(items))
    if timings is not None:
        timings["signals_seconds"] = round(t1 - t0, 3)
        timings["lists_seconds"] = round(time.perf_counter() - t1, 3)
    return lists.drop(columns=["sources"])


def _watermark_row(cur) -> tuple[dt.datetime | None, str | None, dict]:
    cur.execute("SELECT value, model_version, details FROM pipeline_watermarks "
                "WHERE name = %s", (NAME,))
    row = cur.fetchone()
    return (row[0], row[1], row[2] or {}) if row else (None, None, {})


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def run(until: dt.datetime | None = None, *, dsn: str | None = None,
        lookback: dt.timedelta = LOOKBACK, chunk_users: int | None = None,
        budget_s: float | None = None) -> dict:
    """One nearline pass up to ``until`` (the run's data interval end; None: now).

    The run first fixes its window ``(lo, hi]`` of arrival times and the users with
    events in it, then processes those users in ascending id order, ``chunk_users``
    (``RECS_NEARLINE_CHUNK_USERS``) per transaction. Each chunk's transaction writes the
    chunk's lists and vectors together with the watermark: after the last chunk the
    watermark's value becomes ``hi``; before it, the value stays ``lo`` and ``details``
    holds ``pending`` (the window, its version, and the last user id done). A run that
    finds ``pending`` resumes that window after that user, so a run that is killed, fails
    or stops for its budget loses no event and processes no user twice. No chunk starts
    after ``budget_s`` (``RECS_NEARLINE_BUDGET_S``) seconds; the next run goes on. A
    version switch between chunks ends the run (the next one catches the new version up).
    """
    from core import settings as settings_mod
    from jobs import rules as rules_mod
    from jobs.train_als import load_factors
    from models.confidence import aggregate_pairs

    s = settings_mod.get()
    chunk_users = int(chunk_users or s.nearline_chunk_users)
    budget_s = s.nearline_budget_s if budget_s is None else float(budget_s)
    t0 = time.perf_counter()
    conn = db.connect(dsn)
    try:
        # 1. The window: the pending one of an earlier run, or a new one up to now.
        with conn, conn.cursor() as cur:
            cur.execute(LIVE_LISTS_LOCK)  # before the cut: a run waiting here cuts later
            value, wm_version, details = _watermark_row(cur)
            live = live_version(cur)
            pending = details.get("pending")
            if pending and live is not None and pending.get("version") == live.version:
                lo, hi = _parse_time(pending.get("from")), _parse_time(pending["to"])
                after, catch_up = int(pending["last_user"]), bool(pending["catch_up"])
            else:
                lo, after = value, None
                hi = safe_until(cur, until)
                if lo is not None:
                    hi = max(hi, lo)
                catch_up = bool(live and wm_version != live.version)
            summary: dict[str, Any] = {
                "version": live.version if live else None, "from": to_utc_iso(lo),
                "to": to_utc_iso(hi), "users_changed": 0, "users_updated": 0,
                "users_without_known_items": 0, "events_read": 0,
                "version_catch_up": catch_up, "resumed_after_user": after, "chunks": 0,
                "chunk_users": chunk_users, "users_left": 0}
            if live is None:
                write_watermark(cur, NAME, hi, None, summary)
                summary["seconds"] = round(time.perf_counter() - t0, 3)
                return summary
            users = changed_users(cur, lo, hi, live.data_end if catch_up else None,
                                  lookback)
            if len(users):
                # The events of every user of the window (those done by an earlier run
                # too): every chunk sees the same data, whatever the chunking.
                window = int(live.param("window_days", 0) or 0)
                events = user_events(cur, users, hi,
                                     hi - dt.timedelta(days=window) if window else None)
                pairs = aggregate_pairs(events)
                summary["events_read"] = int(len(events))
            if after is not None:
                users = users[users > after]
            summary["users_changed"] = int(len(users))
            blocked = rules_mod.blocked_items(conn, s.rules_file or None)
            if not len(users):
                summary["seconds"] = round(time.perf_counter() - t0, 3)
                write_watermark(cur, NAME, hi, live.version, summary)
                log.info("nearline %s: %s", summary["version"], summary)
                return summary
        # 2. The users in chunks, each chunk with its progress in one transaction.
        factors = load_factors(live.factors_dir)
        lists_s = 0.0
        for start in range(0, len(users), chunk_users):
            if start and time.perf_counter() - t0 >= budget_s:
                summary["users_left"] = int(len(users) - start)
                log.warning("nearline: budget of %.0f s spent; %d users left to the next "
                            "run", budget_s, len(users) - start)
                break
            chunk = users[start:start + chunk_users]
            with conn, conn.cursor() as cur:
                cur.execute(LIVE_LISTS_LOCK)
                now = live_version(cur)
                if now is None or now.version != live.version:
                    summary["users_left"] = int(len(users) - start)
                    summary["stopped_by_switch"] = now.version if now else None
                    break  # nothing written: the next run catches the new version up
                t_chunk = time.perf_counter()
                _refresh_users(cur, live, chunk, pairs, hi, factors, blocked, summary)
                lists_s += time.perf_counter() - t_chunk
                summary["chunks"] += 1
                summary["seconds"] = round(time.perf_counter() - t0, 3)
                if start + chunk_users >= len(users):
                    write_watermark(cur, NAME, hi, live.version, summary)
                else:
                    progress = {"from": to_utc_iso(lo), "to": to_utc_iso(hi),
                                "version": live.version, "catch_up": catch_up,
                                "last_user": int(chunk[-1])}
                    write_watermark(cur, NAME, lo if lo is not None else hi, wm_version,
                                    {**summary, "pending": progress})
        if summary["users_updated"]:
            summary["seconds_per_user"] = round(lists_s / summary["users_updated"], 4)
    finally:
        conn.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("nearline %s: %s", summary["version"], summary)
    return summary


def _refresh_users(cur, live: LiveVersion, users: np.ndarray, window_pairs: pd.DataFrame,
                   hi: dt.datetime, factors, blocked: frozenset[int], summary: dict) -> None:
    """Fold ``users`` in and rewrite their lists in the live version (caller's
    transaction); ``window_pairs``: the pairs of every user of the run's window. Counts
    go into ``summary``."""
    from jobs.build_index import load_index
    from jobs.precompute import personalized_lists
    from jobs.rules import drop_blocked
    from jobs.train_als import Factors

    pairs = window_pairs[window_pairs["user_id"].isin(users)]
    user_ids, vectors = fold_in(pairs, factors.item_ids, factors.item_factors,
                                float(live.param("als_reg", 0.1)),
                                float(live.param("als_alpha", 2.0)))
    summary["users_without_known_items"] += int(len(users) - len(user_ids))
    if not len(user_ids):
        return
    if live.has_funnel:
        lists = funnel_lists(live, window_pairs, user_ids, vectors, hi,
                             int(live.param("top_k", 100)), timings=summary)
        summary["path"] = f"funnel ({live.model})"
    else:
        summary["path"] = "als (version without funnel artefacts)"
        index = load_index(live.index_dir / "items_ip.faiss")
        if index.ntotal != len(factors.item_ids):
            raise RuntimeError(f"{live.index_dir}: index has {index.ntotal} "
                               f"items, factors {len(factors.item_ids)}")
        cur.execute("SELECT item_id, title FROM items WHERE item_id = ANY(%s)",
                    ([int(i) for i in pairs["item_id"].unique()],))
        titles = pd.Series(dict(cur.fetchall()), dtype="object")
        folded = Factors(user_ids, vectors, factors.item_ids, factors.item_factors)
        lists = personalized_lists(folded, index, pairs, titles,
                                   int(live.param("top_k", 100)))
    part = partition_of(cur, "recommendations", live.version)
    cur.execute(f"SELECT user_id, items, scores, reasons, reason_item_ids "
                f"FROM {part} WHERE user_id = ANY(%s)", ([int(u) for u in user_ids],))
    old = {r[0]: r[1:] for r in cur.fetchall()}
    consumed = pairs.groupby("user_id")["item_id"].apply(set).to_dict()
    lists = keep_new_slots(lists, old, consumed)
    rows = []
    for user, items, scores, reasons, rids, tail in lists.itertuples(index=False, name=None):
        # Block rules hold for carried-over slots too (and rules changed since the
        # version's lists were computed).
        items, scores, reasons, rids = drop_blocked(items, scores, reasons, rids,
                                                    blocked=blocked)
        rows.append((user, items, scores, reasons, rids, tail))
    summary["users_updated"] += upsert_lists(
        cur, "recommendations", "user_id", live.version, rows,
        ["items", "scores", "reasons", "reason_item_ids", "history_tail"])
    _upsert_user_vectors(cur, f"als:{live.version}", user_ids, vectors)


def _upsert_user_vectors(cur, model_ver: str, user_ids: np.ndarray,
                         vectors: np.ndarray) -> None:
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO embeddings (entity_id, entity_type, vector, model_ver, updated_at) "
        "VALUES %s ON CONFLICT (model_ver, entity_type, entity_id) DO UPDATE "
        "SET vector = EXCLUDED.vector, updated_at = EXCLUDED.updated_at",
        [(int(u), v.tolist(), model_ver) for u, v in zip(user_ids, vectors, strict=True)],
        template="(%s, 'user', %s, %s, now())", page_size=1000)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.nearline [--until ISO]``: one pass; prints its summary as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m jobs.nearline", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("--until", type=dt.datetime.fromisoformat, default=None,
                        help="end of the data interval (ISO time with zone); default now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(args.until), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
