"""Event ingestion and session-blending freshness, over HTTP on loopback.

Against the live version of the configured database (run `make pipeline` first), with
the reader under gunicorn (serve/gunicorn.conf.py) and a fresh API key of scope events:

1. **Sustained ingestion**: one server process (`--workers 1`), batches of 100
   events posted back to back for ``--seconds``; events per second, against a raw
   `COPY` of the same rows into the same table, measured in the same run.
2. **Session blending**: for ``--probes`` users, post a view of an item, then GET the
   user's list: the time from the POST until a response that shows items "Because you
   watched <that item>".

    .venv/bin/python -m bench.ingest [--seconds 20] [--probes 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import time

import requests

from bench.common import Gunicorn, percentiles
from core import db


def _key() -> str:
    from serve import apikeys

    with db.transaction() as cur:
        name = f"bench-ingest-{int(time.time())}"
        _, key = apikeys.create(cur, name, ("events",))
    return key


def _events(n: int, users: list[int], items: list[int], start: dt.datetime, seed: int):
    rng = random.Random(seed)
    return [{"user_id": rng.choice(users), "item_id": rng.choice(items),
             "event_type": rng.choice(("click", "view", "purchase")),
             "timestamp": (start + dt.timedelta(microseconds=i)).isoformat()}
            for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--probes", type=int, default=50)
    args = p.parse_args()
    with db.transaction() as cur:
        cur.execute("""SELECT r.user_id, r.items[1] FROM serving_state s
                       JOIN recommendations r ON r.model_version = s.live_version
                       ORDER BY r.user_id""")
        rows = cur.fetchall()
        cur.execute("SELECT item_id FROM items ORDER BY item_id")
        items = [r[0] for r in cur.fetchall()]
    if not rows:
        raise SystemExit("no live version: run `make pipeline` (or recs pipeline) first")
    users = [r[0] for r in rows]
    headers = {"X-API-Key": _key(), "Content-Type": "application/json"}
    # Ingested events are dated a day back, so that the probes' views (dated now) are
    # each user's newest events.
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    result = {}
    with Gunicorn("serve.app:create_app()", extra=["--workers", "1"]) as server:
        session = requests.Session()
        # 1. Sustained ingestion, batches of 100.
        stored, batches, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            batch = _events(100, users, items, now + dt.timedelta(milliseconds=batches), batches)
            r = session.post(server.base + "/api/v1/events", headers=headers,
                             data=json.dumps({"events": batch}), timeout=10)
            assert r.status_code == 201, r.text
            stored += r.json()["stored"]
            batches += 1
        http_s = time.perf_counter() - t0
        # Reference: COPY of as many rows of the same shape, same table, same run.
        rows_copy = [(10**15 + i, e["user_id"], e["item_id"], e["event_type"], None,
                      e["timestamp"]) for i, e in enumerate(
                          _events(stored, users, items, now - dt.timedelta(hours=1), 99))]
        with db.transaction() as cur:
            cur.execute("SELECT recs_ensure_interaction_partitions(%s, %s)",
                        ((now - dt.timedelta(days=1)).date(), (now + dt.timedelta(days=2)).date()))
        t1 = time.perf_counter()
        with db.transaction() as cur:
            db.copy_rows(cur, "interactions", ["event_id", "user_id", "item_id", "event_type",
                                               "rating", '"timestamp"'], rows_copy)
        copy_s = time.perf_counter() - t1
        result["ingest"] = {
            "events_stored": stored, "batches": batches,
            "http_events_per_s": round(stored / http_s),
            "copy_events_per_s": round(stored / copy_s),
            "ratio_http_over_copy": round((stored / http_s) / (stored / copy_s), 3)}
        # 2. Session blending: POST a view, then GET until the list shows it.
        latencies, rng = [], random.Random(5)
        for user in rng.sample(users, min(args.probes, len(users))):
            item = rng.choice(items)
            t = time.perf_counter()
            r = session.post(server.base + "/api/v1/events", headers=headers, timeout=10,
                             data=json.dumps({"user_id": user, "item_id": item,
                                              "event_type": "view",
                                              "timestamp": dt.datetime.now(dt.UTC).isoformat()}))
            assert r.status_code == 201, r.text
            for _ in range(50):
                recs = session.get(f"{server.base}/api/v1/recommendations/{user}",
                                   timeout=10).json()["recommendations"]
                if any(x.get("reason_item_id") == item and
                       x["reason"].startswith("Because you watched") for x in recs):
                    latencies.append(time.perf_counter() - t)
                    break
        result["session_blending"] = {"probes": min(args.probes, len(users)),
                                      "changed": len(latencies), **percentiles(latencies)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
