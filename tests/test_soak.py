"""Ten minutes of mixed traffic on a real reader: nothing lost, nothing answered with a 5xx.

A version published by the daily pipeline's own steps (tests/test_nearline.py), a real
gunicorn reader (tests/test_serve.py), and for ``RECS_SOAK_SECONDS`` (default 600):

* two clients reading personalized, similar and trending lists with a read key;
* one client posting batches of events with an events key, each event with its own
  ``event_id`` (so that a retried batch could not be stored twice);
* in the test's own thread, a nearline run every ``NEARLINE_EVERY_S`` and, a third of the
  way in, the next day's daily run published under the readers.

Then: every read answered 200, every post 201, the events stored (counted in the
database) equal the events posted, and the reader still answers from the database. The
figures are printed (docs/benchmarks.md records one run).
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import threading
import time

import psycopg2
import pytest
import requests

from jobs import nearline
from serve import apikeys
from tests.test_nearline import DAY, daily_steps, make_live
from tests.test_serve import Gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.faults]

SOAK_S = float(os.environ.get("RECS_SOAK_SECONDS", "600"))
NEARLINE_EVERY_S = 60.0
BATCH = 5


@pytest.fixture
def live(dsn, tmp_path, monkeypatch):
    yield from make_live(dsn, tmp_path, monkeypatch)


def _key(dsn: str, name: str, scopes: list[str]) -> str:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        _, key = apikeys.create(cur, name, scopes)
    conn.close()
    return key


def _scalar(dsn: str, query: str, params=()):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        value = cur.fetchone()[0]
    conn.close()
    return value


def test_ten_minute_soak_loses_no_event_and_gives_no_5xx(live, tmp_path):
    dsn = live["dsn"]
    read_key = _key(dsn, "soak-read", ["read"])
    events_key = _key(dsn, "soak-events", ["events"])
    users = [r for (r,) in _rows(dsn, "SELECT DISTINCT user_id FROM recommendations "
                                      "ORDER BY 1")]
    items = [r for (r,) in _rows(dsn, "SELECT item_id FROM items ORDER BY 1")]
    started_db = _scalar(dsn, "SELECT clock_timestamp()")
    server = Gunicorn(dsn, tmp_path / "reader", api_key=events_key,
                      env={"RECS_READ_KEYS_REQUIRED": "true"})
    stop = threading.Event()
    statuses: collections.Counter = collections.Counter()
    sources: collections.Counter = collections.Counter()
    posted = {"events": 0, "stored": 0, "duplicates": 0}
    lock = threading.Lock()
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        session.headers["X-API-Key"] = read_key
        while not stop.is_set():
            user = rng.choice(users)
            path = rng.choice([f"/api/v1/recommendations/{user}?limit=10",
                               f"/api/v1/similar/{rng.choice(items)}?limit=10",
                               "/api/v1/trending?limit=10"])
            try:
                r = session.get(server.url + path, timeout=10)
                with lock:
                    statuses[("GET", r.status_code)] += 1
                    if r.status_code == 200:
                        sources[r.json().get("source")] += 1
                    elif len(failures) < 20:
                        failures.append(f"GET {path}: {r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                with lock:
                    statuses[("GET", "exception")] += 1
                    failures.append(f"GET {path}: {exc}")
            time.sleep(0.02)

    def poster() -> None:
        rng = random.Random(7)
        session = requests.Session()
        session.headers["X-API-Key"] = events_key
        n = 0
        while not stop.is_set():
            now = dt.datetime.now(dt.UTC).isoformat()
            batch = []
            for _ in range(BATCH):
                n += 1
                batch.append({"user_id": rng.choice(users), "item_id": rng.choice(items),
                              "event_type": rng.choice(["view", "click"]),
                              "timestamp": now, "event_id": f"soak-{n}"})
            try:
                r = session.post(server.url + "/api/v1/events", json={"events": batch},
                                 timeout=10)
            except requests.RequestException as exc:
                with lock:
                    statuses[("POST", "exception")] += 1
                    failures.append(f"POST: {exc}")
                continue
            with lock:
                statuses[("POST", r.status_code)] += 1
                if r.status_code == 201:
                    body = r.json()
                    posted["events"] += len(batch)
                    posted["stored"] += body["stored"]
                    posted["duplicates"] += body["duplicates"]
                elif len(failures) < 20:
                    failures.append(f"POST: {r.status_code} {r.text[:200]}")
            time.sleep(0.1)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    threads.append(threading.Thread(target=poster, daemon=True))
    runs = {"nearline": 0, "nearline_users_updated": 0, "published": None}
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        next_nearline = t0 + 10
        publish_at = t0 + SOAK_S / 3
        while time.monotonic() - t0 < SOAK_S:
            if runs["published"] is None and time.monotonic() >= publish_at:
                out = daily_steps(DAY + dt.timedelta(days=1))
                runs["published"] = out["result"]["version"] if out["result"]["passed"] \
                    else f"rejected: {out['result']}"
            if time.monotonic() >= next_nearline:
                result = nearline.run(dsn=dsn)
                runs["nearline"] += 1
                runs["nearline_users_updated"] += int(result.get("users_updated", 0))
                next_nearline = time.monotonic() + NEARLINE_EVERY_S
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop()
    nearline.run(dsn=dsn)  # the events of the last minute, through the live version
    stored = _scalar(dsn, "SELECT count(*) FROM interactions WHERE ingested_at >= %s",
                     (started_db,))
    live_now = _scalar(dsn, "SELECT live_version FROM serving_state")
    print(f"\nsoak {SOAK_S:.0f} s: requests {dict(statuses)}; sources {dict(sources)}; "
          f"events posted {posted['events']}, stored (database) {stored}; runs {runs}; "
          f"live {live_now}")
    assert not failures, failures
    assert {code for (_, code) in statuses} <= {200, 201}, statuses
    assert posted["events"] > 0 and sum(n for (m, _), n in statuses.items() if m == "GET") > 0
    assert posted["duplicates"] == 0
    assert stored == posted["events"] == posted["stored"]
    assert runs["published"] == live_now, runs
    assert runs["nearline"] >= 1


def _rows(dsn: str, query: str):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        rows = cur.fetchall()
    conn.close()
    return rows
