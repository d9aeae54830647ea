"""The reader while its database dies and comes back, under real gunicorn.

A separate private Postgres (never the suite's shared one) is started, given the schema
and a published fixture version, then really stopped and started again: reads keep
answering 200 from memory, quickly; events get 503 with Retry-After; once the database
is back the answers are precomputed again within seconds. A second server started while
the database is down serves the popular snapshot the publish step wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from core import localpg, migrate
from core import settings as settings_mod
from tests.test_serve import (
    VERSION,
    Gunicorn,
    event,
    free_port,
    ids,
    publish_fixture,
    write_snapshot,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FAST_S = 0.1  # each fallback answer must come back faster than this
RECOVER_S = 15.0


@pytest.fixture
def own_pg():
    """Settings of a private Postgres for this test only, removed afterwards."""
    # The server runs as the postgres user when the suite runs as root: its folder must
    # be reachable by that user, which pytest's tmp_path (mode 0700) is not.
    home = Path(tempfile.mkdtemp(prefix="recs-faults-"))
    os.chmod(home, 0o755)
    s = settings_mod.load(env={}, home=home / "pg", pg_port=free_port())
    localpg.start(s)
    try:
        yield s
    finally:
        try:
            localpg.stop(s, mode="immediate")
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _timed_get(server: Gunicorn, path: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = server.get(path)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return elapsed, r.json()


def _wait_for(server: Gunicorn, path: str, source: str) -> dict:
    deadline = time.monotonic() + RECOVER_S
    while True:
        body = server.get(path).json()
        if body["source"] == source:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"still {body['source']!r} after {RECOVER_S}s: {body}")
        time.sleep(0.2)


def test_database_down_and_back(own_pg, tmp_path):
    url = own_pg.dsn
    migrate.apply(url)
    publish_fixture(url)
    home = tmp_path / "home"
    write_snapshot(home / "lake", "snapshot-v0", [33, 34, 35])

    server = Gunicorn(url, home)
    late = None
    try:
        path = "/api/v1/recommendations/7?limit=3"
        body = server.get(path).json()
        assert ids(body) == [10, 11, 12] and body["source"] == "precomputed"
        for _ in range(4):  # warm both workers' popular lists and pools
            server.get("/api/v1/recommendations/999?limit=3")
            server.get(path)

        localpg.stop(own_pg)
        times = []
        for i in range(20):
            elapsed, body = _timed_get(server, path + "&exclude=2")
            times.append(elapsed)
            assert body["fallback"] is True and body["source"] == "memory"
            # The list loaded from the database at start, not the snapshot.
            assert ids(body) == [1, 3, 4] and body["model_version"] == VERSION
            if i == 10:
                time.sleep(1.1)  # past the breaker's back-off: it tries the database again
        assert max(times) < FAST_S, times
        for path_ in ("/api/v1/similar/20?limit=2", "/api/v1/trending?limit=2"):
            elapsed, body = _timed_get(server, path_)
            assert body["source"] == "memory" and elapsed < FAST_S
        r = server.post("/api/v1/events", event(7, 20))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "unavailable"
        assert server.get("/readyz").status_code == 503
        assert server.get("/healthz").status_code == 200

        # A server started while the database is down serves the snapshot.
        late = Gunicorn(url, home)
        elapsed, body = _timed_get(late, "/api/v1/recommendations/7?limit=2")
        assert body["source"] == "memory" and body["fallback"] is True
        assert ids(body) == [33, 34] and body["model_version"] == "snapshot-v0"

        localpg.start(own_pg)
        for srv in (server, late):
            _wait_for(srv, path, "precomputed")
        time.sleep(1.1)  # every worker's back-off is over: all of them use the database
        for srv in (server, late):
            for _ in range(6):
                body = srv.get(path).json()
                assert ids(body) == [10, 11, 12] and body["source"] == "precomputed"
        r = server.post("/api/v1/events", event(7, 20))
        assert r.status_code == 201
        assert ids(server.get(path).json()) == [21, 10, 22]
        # The late server's popular list now comes from the database, not the snapshot.
        body = _wait_for(late, "/api/v1/recommendations/999?limit=2", "popular")
        assert ids(body) == [1, 2] and body["model_version"] == VERSION
    finally:
        server.stop()
        if late is not None:
            late.stop()


def test_no_database_and_no_snapshot(tmp_path):
    url = f"postgresql://recs@127.0.0.1:{free_port()}/recs"  # nothing listens there
    server = Gunicorn(url, tmp_path / "home")
    try:
        elapsed, body = _timed_get(server, "/api/v1/recommendations/7")
        assert body == {"recommendations": [], "experiment_id": None, "fallback": True,
                        "source": "memory", "user_id": 7, "model_version": None}
        assert server.get("/readyz").status_code == 503
        r = server.post("/api/v1/events", event(7, 1))
        assert r.status_code == 503 and "Retry-After" in r.headers
    finally:
        server.stop()
