"""Hourly: new and changed items reach the live lists without retraining ALS.

:func:`run` (dags/hourly.py calls it once an hour) does, for the items whose
``updated_at`` lies in ``(watermark, until]`` (every item on the first run):

1. **Text embeddings** of ``"<title>. <category>. <tags>"`` with all-MiniLM-L6-v2
   (models/text.py), stored in ``embeddings`` (``entity_type 'item'``, ``model_ver
   'minilm-l6-v2'``) and in the lake (``text_embeddings/minilm-l6-v2/items.parquet``).
   Only those items are embedded; the others keep their vectors.
2. **Text index**: an exact inner-product (cosine) FAISS index over every item's text
   vector (HNSW above ``exact_index_max_items``), rebuilt into ``text_index/current/``.
   It is the similarity space that new items join: they have no ALS factors yet.
3. **Similar lists**: each new item without ALS factors ("cold") gets its text
   neighbours as its similar list ("Similar to <title>"), and is inserted, at a fixed
   slot, into the similar lists of its nearest items that have one, so it shows up
   beside items people already look at.
4. **"New in <category>" pools**: items created in the last ``new_days`` days, per
   category, as the trending lists ``new:category:<name>``, ordered by the bandit's
   posterior mean.
5. **Bandit**: Thompson sampling (models/bandit.py) over the pool. ``bandit_arms`` keeps
   per item the users it was placed for (impressions) and the distinct users who engaged
   with it in each hourly window (clicks). Users active in the last ``active_days`` days
   (at most ``max_users``, most recent first) get one "New in <category>" item from their
   top categories at position ``slot`` of their list, one Thompson draw per user, with a
   generator seeded from the project seed and the run's time: the same run chooses the
   same items.

Embeddings are computed before the write transaction; everything else (embeddings rows,
lists, counters, the watermark) is written in one transaction, so a failed run changes
nothing and the next run takes the same items again. When the live version changes, the
next run re-applies steps 3-5 for every cold item of the pool to the new version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2.extras

from core import db, lake
from core.constants import NO_REASON_ITEM
from jobs.nearline import (
    LIVE_LISTS_LOCK,
    LOOKBACK,
    NEW_REASON_PREFIX,
    LiveVersion,
    live_version,
    partition_of,
    read_watermark,
    safe_until,
    splice,
    to_utc_iso,
    upsert_lists,
    write_watermark,
)
from models import bandit
from models import text as text_model

log = logging.getLogger("recs.hourly")

LOCK = "recs_hourly"  # also held by the daily text step while it writes the text store
NAME = "hourly"
POOL = "new"
NEW_LIST_PREFIX = "new:category:"


@dataclass(frozen=True)
class HourlyParams:
    new_days: int = 14        # an item is new this many days after its created_at
    active_days: int = 7      # users with events in this many days get a New-in slot
    max_users: int = 100_000  # at most this many users get a slot per run
    slot: int = 5             # 1-based position of the New-in item in a user's list
    neighbours: int = 5       # nearest items whose similar list gets each cold item
    similar_slot: int = 3     # 1-based position of a cold item in those lists
    top_categories: int = 2   # a user's most engaged categories that can give a New-in item
    seed: int = 42
    exact_max: int = 50_000

    def __post_init__(self) -> None:
        for name in ("new_days", "active_days", "max_users", "slot", "neighbours",
                     "similar_slot", "top_categories", "exact_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"HourlyParams.{name}={getattr(self, name)}: must be >= 1")


def params_from_settings(s=None) -> HourlyParams:
    """The hourly parameters from the process settings (``RECS_NEW_ITEM_*``, validated
    when the settings load)."""
    from core import settings as settings_mod

    s = s or settings_mod.get()
    return HourlyParams(new_days=s.new_item_days, active_days=s.new_item_active_days,
                        max_users=s.new_item_max_users, slot=s.new_item_slot,
                        seed=s.seed, exact_max=s.exact_index_max_items)


def text_store_path(lake_root: Path | None = None) -> Path:
    return (lake_root or lake.root()) / "text_embeddings" / text_model.MODEL_VERSION / \
        "items.parquet"


def text_index_dir(lake_root: Path | None = None) -> Path:
    return (lake_root or lake.root()) / "text_index" / "current"


# --- steps (each a function of frames and arrays) ----------------------------------------

def merge_store(store: pd.DataFrame | None, ids: np.ndarray, vectors: np.ndarray
                ) -> pd.DataFrame:
    """The text store (item_id, vector) with ``ids`` replaced by ``vectors``."""
    fresh = pd.DataFrame({"item_id": ids.astype("int64")})
    fresh["vector"] = list(vectors.astype("float32"))
    if store is not None and len(store):
        store = store[~store["item_id"].isin(ids)]
        fresh = pd.concat([store, fresh], ignore_index=True)
    return fresh.sort_values("item_id", kind="stable").reset_index(drop=True)


def text_neighbours(index, store_ids: np.ndarray, store_vectors: np.ndarray,
                    query_ids: np.ndarray, k: int) -> dict[int, list[tuple[int, float]]]:
    """For each query item, its ``k`` nearest other items by text cosine."""
    from models import index as ann

    pos = pd.Series(np.arange(len(store_ids)), index=store_ids)
    rows = pos.reindex(query_ids).to_numpy()
    out: dict[int, list[tuple[int, float]]] = {}
    have = ~np.isnan(rows)
    if not have.any():
        return out
    q_rows = rows[have].astype("int64")
    scores, hits = ann.search(index, store_vectors[q_rows], k + 1)
    for item, r, s in zip(query_ids[have], hits, scores, strict=True):
        keep = (r >= 0) & (store_ids[np.maximum(r, 0)] != item)
        out[int(item)] = [(int(store_ids[j]), float(v))
                          for j, v in zip(r[keep][:k], s[keep][:k], strict=True)]
    return out


def user_categories(activity: pd.DataFrame, max_users: int, top: int) -> pd.DataFrame:
    """Active users (most recent first, at most ``max_users``) and their top categories.

    ``activity``: user_id, category, n (events), last (newest event). Returns user_id,
    categories (list, most engaged first).
    """
    if activity.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "categories": []})
    last = activity.groupby("user_id")["last"].max()
    users = (last.reset_index().sort_values(["last", "user_id"], ascending=[False, True],
                                            kind="stable")["user_id"].head(max_users))
    act = activity[activity["user_id"].isin(users)].sort_values(
        ["user_id", "n", "category"], ascending=[True, False, True], kind="stable")
    cats = act.groupby("user_id")["category"].apply(lambda s: list(s)[:top])
    return pd.DataFrame({"user_id": users.to_numpy(),
                         "categories": [cats.get(u, []) for u in users]})


def place_new_items(rows: dict[int, tuple], users: pd.DataFrame, arms: pd.DataFrame,
                    consumed: dict[int, set], rng: np.random.Generator, slot: int
                    ) -> tuple[list[tuple], dict[int, int]]:
    """One Thompson draw per user over the pool items of the user's top categories that
    the user has not consumed and that are not in the list already; the winner goes to
    ``slot`` with reason "New in <category>" and takes the score of the slot it fills.

    ``rows``: user_id -> (items, scores, reasons, reason_item_ids) of the live list;
    ``arms``: item_id, category, impressions, clicks. Returns the changed rows (user_id,
    items, scores, reasons, reason_item_ids) and impressions per item.
    """
    arm_ids = arms["item_id"].to_numpy()
    by_cat = {c: np.flatnonzero(arms["category"].to_numpy() == c)
              for c in arms["category"].unique()}
    order, candidates = [], []
    for rec in users.itertuples(index=False):
        row = rows.get(rec.user_id)
        if row is None:
            continue
        in_list = {i for i, r in zip(row[0], row[2], strict=True)
                   if not (r or "").startswith(NEW_REASON_PREFIX)}
        seen = consumed.get(rec.user_id, set()) | in_list
        cand = [a for c in rec.categories for a in by_cat.get(c, [])
                if arm_ids[a] not in seen]
        order.append(rec.user_id)
        candidates.append(np.array(cand, dtype="int64"))
    chosen = bandit.choose(candidates, arms["impressions"].to_numpy(),
                           arms["clicks"].to_numpy(), rng)
    pool = set(arm_ids.tolist())
    changed, shown = [], {}
    for user, arm in zip(order, chosen, strict=True):
        items, scores, reasons, rids = (list(x) for x in rows[user])
        keep_len = len(items)
        # The one New-in slot: drop the old pick when it is replaced or left the pool.
        for i in reversed(range(len(items))):
            if (reasons[i] or "").startswith(NEW_REASON_PREFIX) and \
                    (arm >= 0 or items[i] not in pool):
                for seq in (items, scores, reasons, rids):
                    del seq[i]
        if arm >= 0:
            item = int(arm_ids[arm])
            pos = min(slot - 1, len(items))
            score = scores[pos] if pos < len(scores) else (scores[-1] if scores else 0.0)
            splice(items, scores, reasons, rids, pos,
                   (item, score, f"{NEW_REASON_PREFIX}{arms['category'].iloc[arm]}",
                    NO_REASON_ITEM),
                   keep_len)
            shown[item] = shown.get(item, 0) + 1
        if items != list(rows[user][0]) or reasons != list(rows[user][2]):
            changed.append((user, items, scores, reasons, rids))
    return changed, shown


def pool_lists(arms: pd.DataFrame) -> list[tuple]:
    """``new:category:<name>`` lists: (list_name, items, scores, reasons), best first."""
    if arms.empty:
        return []
    frame = arms.assign(mean=bandit.posterior_mean(arms["impressions"].to_numpy(),
                                                   arms["clicks"].to_numpy()))
    frame = frame.sort_values(["category", "mean", "created_at", "item_id"],
                              ascending=[True, False, False, True], kind="stable")
    out = []
    for cat, g in frame.groupby("category", sort=True):
        out.append((f"{NEW_LIST_PREFIX}{cat}", g["item_id"].astype("int64").tolist(),
                    [round(float(x), 6) for x in g["mean"]],
                    [f"{NEW_REASON_PREFIX}{cat}"] * len(g)))
    return out


# --- I/O ------------------------------------------------------------------------------------

def _changed_items(cur, lo: dt.datetime | None, hi: dt.datetime) -> pd.DataFrame:
    cur.execute("SELECT item_id, title, category, tags FROM items "
                "WHERE updated_at <= %s" + (" AND updated_at > %s" if lo else "")
                + " ORDER BY item_id", (hi, lo) if lo else (hi,))
    return pd.DataFrame(cur.fetchall(), columns=["item_id", "title", "category", "tags"])


def read_store(path: Path, cur) -> pd.DataFrame:
    """The lake's text store; rebuilt from the embeddings table when it is missing."""
    if path.exists():
        return pd.read_parquet(path)
    cur.execute("SELECT entity_id, vector FROM embeddings WHERE entity_type = 'item' "
                "AND model_ver = %s ORDER BY entity_id", (text_model.MODEL_VERSION,))
    rows = cur.fetchall()
    frame = pd.DataFrame({"item_id": np.array([r[0] for r in rows], dtype="int64")})
    frame["vector"] = [np.asarray(r[1], dtype="float32") for r in rows]
    return frame


def write_store(store: pd.DataFrame, path: Path) -> None:
    tmp = lake.atomic_file(path)
    store.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _write_index(index, ids: np.ndarray, meta: dict, out: Path) -> None:
    import faiss

    with lake.atomic_dir(out) as tmp:
        faiss.write_index(index, str(tmp / "items_text.faiss"))
        np.save(tmp / "item_ids.npy", ids)
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))


def upsert_item_vectors(cur, ids: np.ndarray, vectors: np.ndarray) -> None:
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO embeddings (entity_id, entity_type, vector, model_ver, updated_at) "
        "VALUES %s ON CONFLICT (model_ver, entity_type, entity_id) DO UPDATE "
        "SET vector = EXCLUDED.vector, updated_at = EXCLUDED.updated_at",
        [(int(i), v.tolist(), text_model.MODEL_VERSION)
         for i, v in zip(ids, vectors, strict=True)],
        template="(%s, 'item', %s, %s, now())", page_size=500)


def _titles(cur, ids) -> dict[int, str]:
    cur.execute("SELECT item_id, title FROM items WHERE item_id = ANY(%s)",
                ([int(i) for i in ids],))
    return dict(cur.fetchall())


def _warm_items(live: LiveVersion) -> set[int]:
    items = pd.read_parquet(live.factors_dir / "items.parquet", columns=["id"])
    return set(items["id"].astype("int64").tolist())


LIST_COLUMNS = {"recommendations": ("user_id", ["items", "scores", "reasons",
                                                "reason_item_ids"]),
                "similar_items": ("item_id", ["items", "scores", "reasons"]),
                "trending": ("list_name", ["items", "scores", "reasons"])}


def remove_blocked(cur, live: LiveVersion, blocked: frozenset[int]) -> dict[str, int]:
    """Take the ``blocked`` items out of every list of the live version (rows that hold
    one are rewritten; caller's transaction). Returns the rows rewritten per table."""
    from jobs.rules import drop_blocked

    out = {}
    for table, (key, columns) in LIST_COLUMNS.items():
        if not blocked:
            out[table] = 0
            continue
        part = partition_of(cur, table, live.version)
        cur.execute(f"SELECT {key}, {', '.join(columns)} FROM {part} "
                    "WHERE items && %s::bigint[]", (sorted(blocked),))
        rows = [(r[0], *drop_blocked(r[1], *r[2:], blocked=blocked)) for r in cur.fetchall()]
        out[table] = upsert_lists(cur, table, key, live.version, rows, columns)
    return out


def _apply_to_live(cur, live: LiveVersion, *, hi: dt.datetime, lo: dt.datetime | None,
                   changed_ids: set[int], reapply_all: bool, index, store: pd.DataFrame,
                   params: HourlyParams, run_key: int,
                   blocked: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Steps 3-5 against the live version's partitions (inside the caller's transaction);
    ``blocked`` items (the block rules) join no list and leave every list they are in."""
    similar_k = int(live.param("similar_k", 50))
    cur.execute("SELECT item_id, category, created_at FROM items WHERE created_at > %s "
                "AND created_at <= %s AND category IS NOT NULL ORDER BY item_id",
                (hi - dt.timedelta(days=params.new_days), hi))
    pool = pd.DataFrame(cur.fetchall(), columns=["item_id", "category", "created_at"])
    pool = pool[~pool["item_id"].isin(list(blocked))].reset_index(drop=True)
    warm = _warm_items(live)
    cold = pool[~pool["item_id"].isin(warm)]
    todo = cold if reapply_all else cold[cold["item_id"].isin(changed_ids)]
    store_ids = store["item_id"].to_numpy()
    store_vectors = np.stack(store["vector"].to_numpy()).astype("float32") if len(store) \
        else np.zeros((0, text_model.DIM), dtype="float32")
    out: dict[str, Any] = {"pool": int(len(pool)), "cold": int(len(cold)),
                           "cold_processed": 0, "similar_lists_joined": 0,
                           "users_given_new_item": 0}

    # 3. Similar lists of cold items, and cold items into their neighbours' lists.
    sim_part = partition_of(cur, "similar_items", live.version)
    todo_ids = todo["item_id"].to_numpy(dtype="int64")
    neigh = text_neighbours(index, store_ids, store_vectors, todo_ids, similar_k + 1) \
        if len(todo_ids) and index is not None else {}
    neigh = {item: [(j, v) for j, v in lst if j not in blocked][:similar_k]
             for item, lst in neigh.items()}
    cur.execute(f"SELECT item_id FROM {sim_part} WHERE item_id = ANY(%s)",
                ([j for lst in neigh.values() for j, _ in lst],))
    has_list = {r[0] for r in cur.fetchall()}
    titles = _titles(cur, set(neigh) | has_list)
    own = [(item, [j for j, _ in lst], [s for _, s in lst],
            [f"Similar to {titles.get(item, item)}"] * len(lst))
           for item, lst in neigh.items()]
    upsert_lists(cur, "similar_items", "item_id", live.version, own,
                 ["items", "scores", "reasons"])
    out["cold_processed"] = len(own)
    joins: dict[int, list[tuple[int, float]]] = {}
    for item, lst in neigh.items():
        for j, s in [(j, s) for j, s in lst if j in has_list or j in neigh][:params.neighbours]:
            joins.setdefault(j, []).append((item, s))
    if joins:
        cur.execute(f"SELECT item_id, items, scores, reasons FROM {sim_part} "
                    "WHERE item_id = ANY(%s)", (list(joins),))
        current = {r[0]: r[1:] for r in cur.fetchall()}
        rows = []
        for j, news in sorted(joins.items()):
            items, scores, reasons = (list(x) for x in current[j])
            for item, s in sorted(news, key=lambda t: (t[1], -t[0])):  # best ends first
                splice(items, scores, reasons, None, params.similar_slot - 1,
                       (item, s, f"Similar to {titles.get(j, j)}", None), similar_k)
            rows.append((j, items, scores, reasons))
        out["similar_lists_joined"] = upsert_lists(cur, "similar_items", "item_id",
                                                   live.version, rows,
                                                   ["items", "scores", "reasons"])

    # 5a. Bandit counters: arms for the pool, clicks from this window's events.
    pool_ids = [int(i) for i in pool["item_id"]]
    if pool_ids:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO bandit_arms (pool, item_id, first_seen) VALUES %s "
                 "ON CONFLICT DO NOTHING", [(POOL, i) for i in pool_ids],
            template="(%s, %s, now())")
        since = lo if lo is not None else hi - dt.timedelta(days=params.new_days)
        cur.execute("""
            UPDATE bandit_arms a SET clicks = a.clicks + c.n, updated_at = now()
            FROM (SELECT item_id, count(DISTINCT user_id) AS n FROM interactions
                  WHERE item_id = ANY(%s) AND ingested_at > %s AND ingested_at <= %s
                    AND "timestamp" >= %s GROUP BY item_id) c
            WHERE a.pool = %s AND a.item_id = c.item_id""",
                    (pool_ids, since, hi, since - LOOKBACK, POOL))
    cur.execute("SELECT item_id, impressions, clicks FROM bandit_arms WHERE pool = %s "
                "AND item_id = ANY(%s)", (POOL, pool_ids))
    counts = pd.DataFrame(cur.fetchall(), columns=["item_id", "impressions", "clicks"])
    arms = pool.merge(counts, on="item_id", how="left").fillna(
        {"impressions": 0, "clicks": 0})

    # 5b. One New-in slot for active users, by Thompson sampling.
    if len(arms):
        cur.execute("""
            SELECT e.user_id, i.category, count(*) AS n, max(e."timestamp") AS last
            FROM interactions e JOIN items i ON i.item_id = e.item_id
            WHERE e."timestamp" > %s AND e."timestamp" <= %s AND e.ingested_at <= %s
              AND i.category IS NOT NULL
            GROUP BY e.user_id, i.category""",
                    (hi - dt.timedelta(days=params.active_days), hi, hi))
        activity = pd.DataFrame(cur.fetchall(), columns=["user_id", "category", "n", "last"])
        users = user_categories(activity, params.max_users, params.top_categories)
        rec_part = partition_of(cur, "recommendations", live.version)
        user_ids = [int(u) for u in users["user_id"]]
        cur.execute(f"SELECT user_id, items, scores, reasons, reason_item_ids FROM {rec_part} "
                    "WHERE user_id = ANY(%s)", (user_ids,))
        rows = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute("SELECT DISTINCT user_id, item_id FROM interactions "
                    "WHERE user_id = ANY(%s) AND item_id = ANY(%s) AND ingested_at <= %s",
                    (user_ids, pool_ids, hi))
        consumed: dict[int, set] = {}
        for u, i in cur.fetchall():
            consumed.setdefault(u, set()).add(i)
        changed, shown = place_new_items(rows, users, arms, consumed,
                                         bandit.run_rng(params.seed, run_key), params.slot)
        upsert_lists(cur, "recommendations", "user_id", live.version, changed,
                     ["items", "scores", "reasons", "reason_item_ids"])
        out["users_given_new_item"] = int(sum(shown.values()))
        if shown:
            psycopg2.extras.execute_values(
                cur, "UPDATE bandit_arms a SET impressions = a.impressions + v.n, "
                     "updated_at = now() FROM (VALUES %s) AS v(item_id, n) "
                     "WHERE a.pool = 'new' AND a.item_id = v.item_id",
                [(int(i), int(n)) for i, n in sorted(shown.items())])
            arms["impressions"] += arms["item_id"].map(shown).fillna(0).astype("int64")

    # 4. The pools, best posterior first; lists of categories that left the pool go.
    lists = pool_lists(arms)
    upsert_lists(cur, "trending", "list_name", live.version, lists,
                 ["items", "scores", "reasons"])
    trend_part = partition_of(cur, "trending", live.version)
    cur.execute(f"DELETE FROM {trend_part} WHERE list_name LIKE %s "
                "AND NOT (list_name = ANY(%s))",
                (NEW_LIST_PREFIX + "%", [name for name, *_ in lists]))
    out["pools"] = len(lists)
    out["blocked_removed"] = remove_blocked(cur, live, blocked)
    return out


def run(until: dt.datetime | None = None, *, dsn: str | None = None,
        params: HourlyParams | None = None, lake_root: Path | None = None,
        encoder: Callable[[Sequence[str]], np.ndarray] | None = None) -> dict:
    """One hourly pass up to ``until`` (the run's data interval end; None: now)."""
    from core import settings as settings_mod
    from jobs import rules as rules_mod
    from models import index as ann

    params = params or HourlyParams()
    encoder = encoder or text_model.encode
    rules_file = settings_mod.get().rules_file
    t0 = time.perf_counter()
    conn = db.connect(dsn)
    try:
        with db.advisory_lock(conn, LOCK):  # one run at a time
            # Read: the bound, the watermark and the changed items (before any write).
            with conn, conn.cursor() as cur:
                hi = safe_until(cur, until)
                lo, wm_version = read_watermark(cur, NAME)
                if lo is not None:
                    hi = max(hi, lo)
                changed = _changed_items(cur, lo, hi)
                store_path = text_store_path(lake_root)
                store = read_store(store_path, cur)
            # Embed outside any transaction (seconds to minutes on a large first run).
            t_embed = time.perf_counter()
            ids = changed["item_id"].to_numpy(dtype="int64")
            texts = [text_model.item_text(t, c, g) for t, c, g in
                     zip(changed["title"], changed["category"], changed["tags"], strict=True)]
            vectors = encoder(texts) if len(texts) else np.zeros((0, text_model.DIM), "float32")
            embed_s = time.perf_counter() - t_embed
            # The lake's store and the text index hold content only (re-writing is harmless).
            index = None
            if len(ids) or not store_path.exists():
                store = merge_store(store, ids, vectors)
                write_store(store, store_path)
            if len(store):
                vecs = np.stack(store["vector"].to_numpy()).astype("float32")
                index = ann.build(vecs, ann.IndexConfig(exact_max=params.exact_max,
                                                        normalize=True))
                if len(ids) or not (text_index_dir(lake_root) / "items_text.faiss").exists():
                    _write_index(index, store["item_id"].to_numpy(dtype="int64"),
                                 {"n_items": len(store), "model": text_model.MODEL_VERSION,
                                  "until": to_utc_iso(hi), "kind": ann.kind(index)},
                                 text_index_dir(lake_root))
            run_key = int((until or hi).timestamp())
            # Write: vectors, lists, counters and the watermark in one transaction.
            with conn, conn.cursor() as cur:
                cur.execute(LIVE_LISTS_LOCK)  # one writer of the live lists at a time
                if len(ids):
                    upsert_item_vectors(cur, ids, vectors)
                live = live_version(cur)
                summary: dict[str, Any] = {
                    "version": live.version if live else None, "from": to_utc_iso(lo),
                    "to": to_utc_iso(hi), "items_embedded": int(len(ids)),
                    "embed_seconds": round(embed_s, 3), "text_index_items": int(len(store)),
                    "params": asdict(params)}
                if live is not None:
                    summary.update(_apply_to_live(
                        cur, live, hi=hi, lo=lo, changed_ids=set(ids.tolist()),
                        reapply_all=wm_version != live.version, index=index, store=store,
                        params=params, run_key=run_key,
                        blocked=rules_mod.blocked_items(conn, rules_file or None)))
                summary["seconds"] = round(time.perf_counter() - t0, 3)
                write_watermark(cur, NAME, hi, live.version if live else None, summary)
    finally:
        conn.close()
    log.info("hourly %s: %s", summary["version"], summary)
    return summary
