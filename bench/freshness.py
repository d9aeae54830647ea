"""Freshness: how long a new event takes to change a user's list (nearline), and a new
item to appear in similar-items lists and users' lists (hourly).

In a fresh home with its own Postgres: synthetic data, the daily pipeline once (in
process) for a live version, then

- nearline: events inserted the way the reader inserts them (``ingested_at`` from the
  database clock) for 1, 100 and 1,000 users, then one nearline pass
  (jobs/nearline.py:run); timed from the insert to the commit of the changed lists;
- hourly: the first pass (every item embedded), then 1, 10 and 100 new items (with
  events that make some users active in their categories), then one hourly pass; timed
  from the insert to the commit, with how many similar lists and users' lists got them;
- with ``--airflow``: one run of each DAG through ``airflow dags test`` (task process,
  DAG parse and all), which is what a scheduled run costs on top of the wait for its
  schedule.

The end-to-end bound is then: nearline interval (the wait for the next run, at worst a
whole interval) + the run through Airflow; hourly likewise with one hour.

    .venv/bin/python -m bench.freshness [--users 1000 --items 500 --events 50000] [--airflow]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from bench.common import ScratchHome
from core.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def _sql(dsn: str, query: str, params=()):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else None


def _post(dsn: str, events: list[tuple[int, int, str]]) -> None:
    """Insert events as the reader's event endpoint does (one transaction)."""
    now = dt.datetime.now(dt.UTC)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s)", (now.date(),
                                                                           now.date()))
        cur.executemany('INSERT INTO interactions (event_id, user_id, item_id, event_type, '
                        '"timestamp") VALUES (nextval(\'interactions_event_id_seq\') + '
                        '3000000000, %s, %s, %s, %s)',
                        [(u, i, k, now) for u, i, k in events])


def _lists(dsn: str, users: list[int]) -> dict[int, list[int]]:
    rows = _sql(dsn, "SELECT user_id, items FROM serving_state s JOIN recommendations r "
                     "ON r.model_version = s.live_version WHERE r.user_id = ANY(%s)",
                (users,))
    return dict(rows)


def bench_nearline(dsn: str, sizes: list[int]) -> list[dict]:
    from jobs import nearline

    nearline.run(dsn=dsn)  # the first pass sets the watermark
    out = []
    users_all = [r[0] for r in _sql(dsn, "SELECT user_id FROM serving_state s "
                                         "JOIN recommendations r ON r.model_version = "
                                         "s.live_version ORDER BY user_id")]
    for n in sizes:
        users = users_all[:n]
        before = _lists(dsn, users)
        # Each user buys the first item of their own list: the list must change.
        _post(dsn, [(u, before[u][0], "purchase") for u in users])
        t0 = time.perf_counter()
        summary = nearline.run(dsn=dsn)
        elapsed = time.perf_counter() - t0
        after = _lists(dsn, users)
        changed = sum(1 for u in users if after.get(u) != before.get(u))
        out.append({"users_with_new_events": len(users), "users_changed_lists": changed,
                    "events_read": summary["events_read"],
                    "event_to_list_s": round(elapsed, 2)})
        print(json.dumps(out[-1]), flush=True)
    return out


def bench_hourly(dsn: str, sizes: list[int]) -> dict:
    from jobs import hourly

    t0 = time.perf_counter()
    first = hourly.run(dsn=dsn)
    result = {"first_pass": {"items_embedded": first["items_embedded"],
                             "seconds": round(time.perf_counter() - t0, 2)},
              "new_items": []}
    print(json.dumps(result["first_pass"]), flush=True)
    next_id = 10_000_000
    users = [r[0] for r in _sql(dsn, "SELECT user_id FROM serving_state s "
                                     "JOIN recommendations r ON r.model_version = "
                                     "s.live_version ORDER BY user_id LIMIT 200")]
    for n in sizes:
        ids = list(range(next_id, next_id + n))
        next_id += n
        # New items whose text is close to existing ones, in their categories.
        _sql(dsn, """INSERT INTO items (item_id, title, category, tags)
                     SELECT n.id, i.title || ' (new cut)', i.category, i.tags
                     FROM unnest(%s::bigint[]) WITH ORDINALITY AS n(id, k)
                     JOIN items i ON i.item_id = n.k""", (ids,))
        cats = dict(_sql(dsn, "SELECT item_id, category FROM items WHERE item_id = ANY(%s)",
                         (ids,)))
        some = _sql(dsn, "SELECT DISTINCT ON (category) category, item_id FROM items "
                         "WHERE item_id < %s AND category = ANY(%s) ORDER BY category, item_id",
                    (10_000_000, list(set(cats.values()))))
        _post(dsn, [(u, item, "view") for u in users[:50] for _, item in some[:3]])
        t0 = time.perf_counter()
        summary = hourly.run(dsn=dsn)
        elapsed = time.perf_counter() - t0
        in_similar = _sql(dsn, "SELECT count(DISTINCT item_id) FROM live_similar_items "
                               "WHERE item_id = ANY(%s)", (ids,))[0][0]
        in_users = _sql(dsn, "SELECT count(*) FROM live_recommendations "
                             "WHERE item_id = ANY(%s)", (ids,))[0][0]
        row = {"new_items": n, "appear_in_similar_lists": in_similar,
               "placed_in_users_lists": in_users,
               "items_embedded": summary["items_embedded"],
               "add_to_similar_lists_s": round(elapsed, 2)}
        result["new_items"].append(row)
        print(json.dumps(row), flush=True)
    return result


def bench_airflow(env: dict[str, str], dsn: str) -> dict:
    """One run of each DAG through `airflow dags test` (metadata in SQLite)."""
    home = Path(env["RECS_HOME"]) / "airflow-bench"
    home.mkdir(exist_ok=True)
    af_env = {**env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
              "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
              "PATH": str(BIN) + os.pathsep + env.get("PATH", "")}

    def airflow(*args: str) -> float:
        t0 = time.perf_counter()
        r = subprocess.run([str(BIN / "airflow"), *args], env=af_env, capture_output=True,
                           text=True, cwd=PROJECT_ROOT)
        if r.returncode != 0:
            raise SystemExit(f"airflow {' '.join(args)} failed:\n{r.stderr[-3000:]}")
        return round(time.perf_counter() - t0, 2)

    airflow("db", "migrate")
    user, item = _sql(dsn, "SELECT r.user_id, r.items[1] FROM serving_state s JOIN "
                           "recommendations r ON r.model_version = s.live_version "
                           "ORDER BY r.user_id DESC LIMIT 1")[0]
    _post(dsn, [(user, item, "purchase")])
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    nearline_s = airflow("dags", "test", "nearline", now.isoformat())
    changed = _lists(dsn, [user])[user][0] != item
    _sql(dsn, "INSERT INTO items (item_id, title, category, tags) SELECT 20000000, "
              "title || ' (airflow)', category, tags FROM items WHERE item_id = 1")
    next_hour = (now + dt.timedelta(hours=1)).replace(minute=0)
    hourly_s = airflow("dags", "test", "hourly", next_hour.isoformat())
    joined = _sql(dsn, "SELECT count(*) FROM live_similar_items WHERE item_id = 20000000")
    return {"nearline_dags_test_s": nearline_s, "nearline_list_changed": changed,
            "hourly_dags_test_s": hourly_s, "hourly_item_in_similar_lists": joined[0][0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--airflow", action="store_true", help="also time one run of each DAG "
                   "through `airflow dags test`")
    p.add_argument("--keep", action="store_true", help="keep the scratch home")
    args = p.parse_args()
    with ScratchHome("recs-bench-freshness-", keep=args.keep) as scratch:
        scratch.recs("db-up")
        scratch.recs("load", "synthetic", "--users", str(args.users), "--items",
                     str(args.items), "--events", str(args.events), "--days", str(args.days))
        scratch.recs("pipeline", "--inline")
        scratch.use()
        dsn = scratch.dsn
        sizes = [n for n in (1, 100, 1000) if n <= args.users]
        report = {"data": {"users": args.users, "items": args.items, "events": args.events},
                  "nearline": bench_nearline(dsn, sizes),
                  "hourly": bench_hourly(dsn, [n for n in (1, 10, 100) if n <= args.items])}
        if args.airflow:
            report["airflow"] = bench_airflow(scratch.env, dsn)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
