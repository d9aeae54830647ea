"""The demo flow end to end, on real components: private Postgres, synthetic data, the
daily DAG through Airflow (Spark ALS, FAISS), gunicorn serving over HTTP, an event posted
then excluded, the fallback with Postgres really stopped, and recovery.

Everything runs through the `recs` command as an operator would, in a private home with
its own Postgres instance and port, so the suite's shared instance is never stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import requests

from core.settings import PROJECT_ROOT
from models.features import feature_names
from models.ranker import RankerConfig

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.spark,
              pytest.mark.slow]

RECS = str(Path(sys.executable).parent / "recs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, home: Path, pg_port: int, http_port: int):
        self.home, self.pg_port, self.http_port = home, pg_port, http_port
        self.base = f"http://127.0.0.1:{http_port}"
        self.dsn = f"postgresql://recs@127.0.0.1:{pg_port}/recs"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RECS_", "AIRFLOW"))}
        # No exploration: these tests check the lists' order (exploration, which reorders
        # the top 5 of 5% of answers, is tested in tests/test_experiments_serve.py).
        self.env.update(RECS_HOME=str(home), RECS_PG_PORT=str(pg_port),
                        RECS_SERVE_BIND=f"127.0.0.1:{http_port}", RECS_LOG_LEVEL="WARNING",
                        RECS_EXPLORATION_RATE="0")

    def recs(self, *args: str, env: dict | None = None, check: bool = True, timeout=900):
        r = subprocess.run([RECS, *args], env={**self.env, **(env or {})}, text=True,
                           capture_output=True, timeout=timeout, cwd=PROJECT_ROOT)
        if check and r.returncode != 0:
            raise AssertionError(f"recs {' '.join(args)} -> {r.returncode}\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
        return r

    def sql(self, query: str, params=()):
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None

    def get(self, path: str, **params):
        # Reads need a key by default; the events key grants reads too.
        return requests.get(self.base + path, params=params, timeout=10,
                            headers={"X-API-Key": self.key})

    def post_event(self, body: dict, key: str | None = None):
        return requests.post(self.base + "/api/v1/events", json=body, timeout=10,
                             headers={"X-API-Key": self.key if key is None else key})


@pytest.fixture(scope="module")
def demo():
    home = Path(tempfile.mkdtemp(prefix="recs-demo-"))
    os.chmod(home, 0o755)  # the postgres user must reach var/pg when tests run as root
    d = Demo(home, _free_port(), _free_port())
    try:
        d.recs("db-up")
        d.recs("load", "synthetic")  # the demo's default dataset
        out = d.recs("pipeline").stdout
        assert "published" in out, out
        d.key = d.recs("keys", "create", "demo-flow").stdout.strip().splitlines()[-1]
        d.recs("serve", "--daemon", "--bind", f"127.0.0.1:{d.http_port}")
        yield d
    finally:
        d.recs("stop", check=False)
        d.recs("db-down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_pipeline_published_through_airflow_and_recorded(demo):
    (live,) = demo.sql("SELECT live_version FROM serving_state")[0]
    status, metrics = demo.sql("SELECT status, metrics FROM model_runs "
                               "WHERE model_version = %s", (live,))[0]
    assert status == "published"
    assert metrics["als"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    # The gate judged the published lists: its choice is the best of the full pipeline
    # and the re-ranked generators, and beats popularity.
    assert {"ranker", "two_tower", "ease", "covisit", "full_pipeline"} <= set(metrics)
    choice = metrics["published_model"]
    options = {"full_pipeline": metrics["full_pipeline"]["ndcg@10"],
               **{g: m["ndcg@10"] for g, m in metrics["reranked"].items()}}
    assert choice["ndcg@10"] == max(options.values()) == options[choice["name"]]
    assert choice["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    (picked,) = demo.sql("SELECT model FROM model_run_figures WHERE model_version = %s "
                         "AND is_published_choice", (live,))[0]
    assert picked == choice["name"]
    # The ranker's features, parameters and training figures are on record.
    training = metrics["ranker_training"]
    assert training["features"] == feature_names()
    assert set(training["params"]) == set(RankerConfig.__dataclass_fields__)
    assert training["n_users"] > 0 and 0.0 < training["candidate_recall"] <= 1.0
    assert metrics["index"]["items_ip"]["recall@10"] == 1.0  # exact below the threshold
    # The DAG ran in Airflow: its metadata database holds a successful run.
    r = demo.recs("airflow", "dags", "list-runs", "daily", "-o", "plain")
    assert "success" in r.stdout, r.stdout
    # Every user with events has a list; no list holds an item its user consumed.
    assert demo.sql("""SELECT count(*) FROM (SELECT DISTINCT user_id FROM interactions) u
                       LEFT JOIN live_recommendations r USING (user_id)
                       WHERE r.user_id IS NULL""")[0][0] == 0
    assert demo.sql("""SELECT count(*) FROM live_recommendations r
                       JOIN interactions i USING (user_id, item_id)""")[0][0] == 0
    # Reasons are true: lists do name history items, and every named item is one the
    # user really consumed.
    assert demo.sql("""SELECT count(*) FROM live_recommendations
                       WHERE reason LIKE 'Because you watched %%'""")[0][0] > 0
    assert demo.sql("""SELECT count(*) FROM live_recommendations r
                       WHERE (r.reason LIKE 'Because you watched %%'
                              OR r.reason LIKE 'Similar to %%')
                         AND NOT EXISTS (SELECT 1 FROM interactions i
                                         WHERE i.user_id = r.user_id
                                           AND i.item_id = r.reason_item_id)""")[0][0] == 0


def test_served_lists_match_the_published_ones(demo):
    user = demo.sql("SELECT min(user_id) FROM live_recommendations")[0][0]
    body = demo.get(f"/api/v1/recommendations/{user}", limit=10).json()
    want = demo.sql("SELECT item_id, reason FROM live_recommendations WHERE user_id = %s "
                    "ORDER BY rank LIMIT 10", (user,))
    assert [(r["item_id"], r["reason"]) for r in body["recommendations"]] == want
    assert body["fallback"] is False and body["experiment_id"] is None
    history = {r[0] for r in demo.sql("SELECT item_id FROM interactions WHERE user_id = %s",
                                      (user,))}
    for rec in body["recommendations"]:
        assert rec["reason"].startswith(("Because you watched ", "Similar to ", "Trending in ",
                                         "New in ", "Popular in ", "Recommended for you",
                                         "Featured")), rec
        if rec["reason"].startswith(("Because you watched ", "Similar to ")):
            assert rec["reason_item_id"] in history, rec  # a true reason
        assert rec["model_version"] == body["model_version"]
    sim_item = body["recommendations"][0]["item_id"]
    similar = demo.get(f"/api/v1/similar/{sim_item}", limit=5).json()
    assert len(similar["recommendations"]) == 5
    assert sim_item not in [r["item_id"] for r in similar["recommendations"]]


def test_unknown_user_gets_popular_items(demo):
    body = demo.get("/api/v1/recommendations/987654321", limit=5).json()
    assert body["fallback"] is True
    assert {r["reason"] for r in body["recommendations"]} == {"Popular right now"}
    popular = demo.sql("SELECT item_id FROM live_trending WHERE list_name = 'popular' "
                       "ORDER BY rank LIMIT 5")
    assert [r["item_id"] for r in body["recommendations"]] == [p[0] for p in popular]


def test_posted_event_is_excluded_on_the_next_request(demo):
    user = demo.sql("SELECT min(user_id) FROM live_recommendations")[0][0]
    first = demo.get(f"/api/v1/recommendations/{user}", limit=10).json()["recommendations"]
    item = first[0]["item_id"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = demo.post_event({"user_id": user, "item_id": item, "event_type": "view",
                         "timestamp": now})
    assert r.status_code == 201, r.text
    after = demo.get(f"/api/v1/recommendations/{user}", limit=10).json()["recommendations"]
    assert item not in [x["item_id"] for x in after]
    assert len(after) == 10
    # The stored event is really in the database.
    assert demo.sql("SELECT count(*) FROM interactions WHERE user_id = %s AND item_id = %s "
                    "AND \"timestamp\" > now() - interval '1 hour'", (user, item))[0][0] == 1


def test_bad_event_is_rejected_naming_the_field(demo):
    body = {"user_id": 1, "item_id": 2, "event_type": "like",
            "timestamp": "2024-01-01T00:00:00Z"}
    r = demo.post_event(body)
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "event_type"
    # Without a valid key nothing is written, whatever the body.
    assert demo.post_event({**body, "event_type": "view"}, key="nope").status_code == 401


def test_analyst_queries_in_the_docs_run(demo):
    text = (PROJECT_ROOT / "docs" / "analyst-queries.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(queries) >= 6
    for q in queries:
        rows = demo.sql(q)
        # The demo defines no experiment: the experiment queries run, with no rows.
        assert rows or "experiment" in q, f"no rows from:\n{q}"


def test_gate_keeps_a_version_that_does_not_beat_popularity_off_the_air(demo):
    (live,) = demo.sql("SELECT live_version FROM serving_state")[0]
    r = demo.recs("pipeline", "--inline", env={"RECS_GATE_MARGIN": "0.99"}, check=False)
    # Nothing published: the command says so and why, and exits with status 3.
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "rejected" in r.stdout and "nothing was published" in r.stdout, r.stdout
    rejected = demo.sql("SELECT model_version FROM model_runs WHERE status = 'rejected'")
    assert len(rejected) == 1 and rejected[0][0] != live
    assert demo.sql("SELECT live_version FROM serving_state")[0][0] == live


def test_fallback_with_postgres_stopped_then_recovery(demo):
    user = demo.sql("SELECT min(user_id) FROM live_recommendations")[0][0]
    # Every worker checks the key once while the database is up (it keeps a key it has
    # seen while the database is away; one it never saw cannot be checked then: 503).
    with ThreadPoolExecutor(8) as pool:
        for r in pool.map(lambda _: demo.get(f"/api/v1/recommendations/{user}"), range(32)):
            assert r.status_code == 200
    demo.recs("db-down")
    try:
        for _ in range(5):
            t0 = time.perf_counter()
            r = demo.get(f"/api/v1/recommendations/{user}", limit=5)
            elapsed = time.perf_counter() - t0
            assert r.status_code == 200
            body = r.json()
            assert body["fallback"] is True and body["source"] == "memory"
            assert len(body["recommendations"]) == 5
            assert elapsed < 1.0
        ev = demo.post_event({"user_id": user, "item_id": 1, "event_type": "click",
                              "timestamp": dt.datetime.now(dt.UTC).isoformat()})
        assert ev.status_code == 503 and "Retry-After" in ev.headers
    finally:
        demo.recs("db-up")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = demo.get(f"/api/v1/recommendations/{user}", limit=5).json()
        if not body["fallback"]:
            break
        time.sleep(0.5)
    assert body["fallback"] is False
