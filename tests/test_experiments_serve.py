"""Experiments in the reader (issue 13), against the real Postgres and the real Flask app,
as the reader's own role (recs_reader): routing matches models.assignment, a variant's
version is served, the holdout and overrides, the exposure log (every list, its fields,
served == logged + dropped, overflow never blocks), events joined by request id,
interleaving teams, exploration propensities, and the flush at gunicorn's worker exit.

The fixture publishes two versions: ``V2`` (kept, the previous one) with its own lists,
then ``VERSION`` (live) as tests/test_serve.py does.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import psycopg2
import pytest

from models.assignment import Experiment, Holdout, Variant, assign, in_holdout
from models.exploration import explore
from models.interleaving import request_rng, team_draft
from serve.app import create_app
from tests.conftest import role_url
from tests.test_serve import VERSION, Gunicorn, event, ids, make_key, publish_fixture

V2 = "v20231201-exp"
LIVE_7 = [10, 11, 12, 13, 14, 15, 16]  # user 7's list in VERSION (tests/test_serve.py)
V2_LIST = [11, 31, 10, 33, 35, 37, 39]  # every user's list in V2 (overlaps LIVE_7)
TREATMENT = {"model_version": V2}


def sql(dsn: str, query: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def add_experiment(dsn: str, key: str, variants: list[dict], *, salt: str = "",
                   kind: str = "ab", layer: str = "default", low: float = 0.0,
                   high: float = 1.0) -> None:
    sql(dsn, "INSERT INTO experiments (experiment_key, layer, salt, layer_low, layer_high, "
             "kind, variants, status) VALUES (%s, %s, %s, %s, %s, %s, %s, 'running')",
        (key, layer, salt, low, high, kind, json.dumps(variants)))


def override(dsn: str, key: str, user: int, variant: str) -> None:
    sql(dsn, "INSERT INTO experiment_overrides (experiment_key, user_id, variant) "
             "VALUES (%s, %s, %s)", (key, user, variant))


def ab(salt: str) -> Experiment:
    """The definition add_experiment stores for an A/B test of V2, as models sees it."""
    return Experiment("exp-ab", "default", (Variant("control", 0.5, {}),
                                             Variant("treatment", 0.5, TREATMENT)),
                      salt=salt, status="running")


AB_VARIANTS = [{"key": "control", "weight": 0.5, "changes": {}},
               {"key": "treatment", "weight": 0.5, "changes": TREATMENT}]


def salt_where(treated: int, control: int) -> str:
    """The first salt that puts ``treated`` in treatment and ``control`` in control."""
    for i in range(1000):
        salt = f"s{i}"
        got = {u: assign(u, [ab(salt)]).get("default") for u in (treated, control)}
        if got[treated] and got[control] and got[treated].variant == "treatment" \
                and got[control].variant == "control":
            return salt
    raise AssertionError("no salt found")


@pytest.fixture
def published(dsn):
    publish_fixture(dsn, version=V2)
    sql(dsn, "UPDATE recommendations SET items = %s WHERE model_version = %s",
        (V2_LIST, V2))
    publish_fixture(dsn)
    return dsn


def reader(settings, dsn, **config):
    """The reader app as recs_reader (the role that may only SELECT experiments and
    overrides and INSERT exposures)."""
    changes = {k: config.pop(k) for k in list(config) if k.islower()}
    s = settings.replace(reader_database_url=role_url(dsn, "recs_reader"), **changes)
    app = create_app({"SETTINGS": s, "TESTING": True, "STORE_BACKOFF_S": 0.2, **config})
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("read", "events"))
    return app, client


def close(app) -> None:
    svc = app.extensions["recs"]
    svc.exposures.close()
    svc.store.close()


def counters(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    out = {}
    for line in text.splitlines():
        m = re.match(r'recs_exposures_total\{outcome="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def exposures(dsn: str) -> dict[str, tuple]:
    rows = sql(dsn, "SELECT request_id::text, user_id, endpoint, experiment_key, variant, "
                    "model_version, items, propensities, teams FROM exposures")
    return {r[0]: r[1:] for r in rows}


# --- routing -----------------------------------------------------------------------------

def test_routing_is_deterministic_and_matches_models_assignment(published, settings):
    dsn = published
    salt = salt_where(7, 9)
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt)
    app, client = reader(settings, dsn)
    other, other_client = reader(settings, dsn)  # another process: the same answers
    try:
        for uid in range(1, 80):
            want = assign(uid, [ab(salt)], holdout=Holdout(0.01)).get("default")
            bodies = [c.get(f"/api/v1/recommendations/{uid}?limit=3").get_json()
                      for c in (client, client, other_client)]
            for body in bodies:
                assert body["experiment_id"] == (want and "exp-ab")
                assert body["variant"] == (want and want.variant)
        seen = {client.get(f"/api/v1/recommendations/{u}").get_json()["variant"]
                for u in range(1, 80)}
        assert {"control", "treatment"} <= seen  # (None: a user in the 1% holdout)
    finally:
        close(app)
        close(other)


def test_variant_version_is_served_and_control_gets_the_live_one(published, settings):
    dsn = published
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt_where(7, 9))
    app, client = reader(settings, dsn)
    try:
        treated = client.get("/api/v1/recommendations/7?limit=5")
        body = treated.get_json()
        assert (body["experiment_id"], body["variant"]) == ("exp-ab", "treatment")
        assert ids(body) == V2_LIST[:5] and body["model_version"] == V2
        assert {r["model_version"] for r in body["recommendations"]} == {V2}
        # Similar and trending types of the user are routed too (V2's lists).
        assert client.get("/api/v1/recommendations/7?type=trending").get_json()[
            "model_version"] == V2
        control = client.get("/api/v1/recommendations/9?limit=3").get_json()
        assert (control["variant"], control["model_version"]) == ("control", VERSION)
        assert ids(control) == [30, 31, 32]
    finally:
        close(app)


def test_a_version_no_longer_kept_falls_back_to_live_and_is_counted(published, settings):
    dsn = published
    variants = [{"key": "control", "weight": 0.0, "changes": {}},
                {"key": "gone", "weight": 1.0, "changes": {"model_version": "v-retired"}}]
    add_experiment(dsn, "exp-gone", variants)
    app, client = reader(settings, dsn, experiment_holdout_fraction=0.0)
    try:
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        assert (body["variant"], body["model_version"]) == ("gone", VERSION)
        assert ids(body) == LIVE_7[:3]
        text = client.get("/metrics").get_data(as_text=True)
        assert re.search(r'recs_fallbacks_total\{cause="experiment_version_gone",'
                         r'endpoint="/api/v1/recommendations/<user_id>"\} [1-9]', text)
    finally:
        close(app)


def test_holdout_users_get_the_default(published, settings):
    dsn = published
    variants = [{"key": "control", "weight": 0.0, "changes": {}},
                {"key": "treatment", "weight": 1.0, "changes": TREATMENT}]
    add_experiment(dsn, "exp-all", variants)
    app, client = reader(settings, dsn, experiment_holdout_fraction=0.5)
    try:
        held = 0
        for uid in range(1, 41):
            body = client.get(f"/api/v1/recommendations/{uid}?limit=3").get_json()
            if in_holdout(uid, Holdout(0.5)):
                held += 1
                assert body["experiment_id"] is None and body["variant"] is None
                assert body["model_version"] == VERSION
            else:
                assert (body["variant"], body["model_version"]) == ("treatment", V2)
        assert 5 < held < 35  # both kinds of user were checked
    finally:
        close(app)
    assert settings.experiment_holdout_fraction == 0.01  # the default


def test_override_wins_over_hash_and_holdout(published, settings):
    dsn = published
    salt = salt_where(7, 9)
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt)
    override(dsn, "exp-ab", 9, "treatment")  # control by hash
    held = next(u for u in range(1, 10_000) if in_holdout(u, Holdout(0.01)))
    override(dsn, "exp-ab", held, "treatment")
    app, client = reader(settings, dsn)
    try:
        body = client.get("/api/v1/recommendations/9?limit=3").get_json()
        assert (body["variant"], body["model_version"]) == ("treatment", V2)
        assert ids(body) == V2_LIST[:3]
        body = client.get(f"/api/v1/recommendations/{held}").get_json()
        assert (body["experiment_id"], body["variant"]) == ("exp-ab", "treatment")
    finally:
        close(app)


def test_an_experiment_not_yet_started_routes_nobody(published, settings):
    dsn = published
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt_where(7, 9))
    sql(dsn, "UPDATE experiments SET starts_at = now() + interval '1 hour'")
    app, client = reader(settings, dsn)
    try:
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        assert (body["experiment_id"], body["model_version"]) == (None, VERSION)
        sql(dsn, "UPDATE experiments SET starts_at = now() - interval '1 hour'")
        app.extensions["recs"].experiments.refresh()
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        assert (body["experiment_id"], body["model_version"]) == ("exp-ab", V2)
    finally:
        close(app)


# --- the exposure log --------------------------------------------------------------------

def test_every_served_list_is_logged_with_its_fields(published, settings):
    dsn = published
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt_where(7, 9))
    app, client = reader(settings, dsn)
    paths = ["/api/v1/recommendations/7?limit=4", "/api/v1/recommendations/9",
             "/api/v1/recommendations/8?type=similar&item_id=20",
             "/api/v1/recommendations/12345?type=trending&limit=2",
             "/api/v1/recommendations/9?context=product_page&item_id=5"]
    try:
        answers = []
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200
            body = r.get_json()
            assert r.headers["X-Request-Id"] == body["request_id"]
            assert uuid.UUID(body["request_id"]).version == 4
            answers.append(body)
        assert len({b["request_id"] for b in answers}) == len(paths)
        app.extensions["recs"].exposures.flush()
        rows = exposures(dsn)
        assert len(rows) == len(paths)
        for body, endpoint in zip(answers, ["personalized", "personalized", "similar",
                                            "trending", "personalized"], strict=True):
            user, ep, exp, variant, version, items, props, teams = rows[body["request_id"]]
            assert (user, ep, exp, variant, version) == (
                body["user_id"], endpoint, body["experiment_id"], body["variant"],
                body["model_version"])
            assert items == ids(body)
            assert props == [1.0] * len(items) and teams is None  # exploration off
        c = counters(client)
        assert c["served"] == len(paths) == c["logged"] and c.get("dropped", 0) == 0
        # The unrouted endpoints name no user: not logged.
        client.get("/api/v1/trending")
        app.extensions["recs"].exposures.flush()
        assert len(exposures(dsn)) == len(paths)
    finally:
        close(app)


def test_queue_overflow_drops_and_never_blocks(published, settings):
    dsn = published
    app, client = reader(settings, dsn, exposure_queue_max=3, EXPOSURE_THREAD_OFF=True)
    try:
        t0 = time.perf_counter()
        for _ in range(10):
            assert client.get("/api/v1/recommendations/7?limit=2").status_code == 200
        assert time.perf_counter() - t0 < 5
        c = counters(client)
        assert (c["served"], c["dropped"]) == (10, 7)
        app.extensions["recs"].exposures.flush()
        c = counters(client)
        assert c["logged"] == 3 and c["served"] == c["logged"] + c["dropped"]
        assert len(exposures(dsn)) == 3
    finally:
        close(app)


def test_a_failed_batch_is_counted_as_dropped(published, settings):
    dsn = published
    app, client = reader(settings, dsn, EXPOSURE_THREAD_OFF=True)
    try:
        client.get("/api/v1/recommendations/7")
        log = app.extensions["recs"].exposures
        log.dsn = role_url(dsn, "recs_analyst")  # may not INSERT into exposures
        log.flush()
        c = counters(client)
        assert (c["served"], c.get("logged", 0), c["dropped"]) == (1, 0, 1)
        assert exposures(dsn) == {}
    finally:
        close(app)


def test_events_with_request_id_join_their_exposure(published, settings):
    dsn = published
    app, client = reader(settings, dsn)
    try:
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        clicked = body["recommendations"][1]["item_id"]
        r = client.post("/api/v1/events", json=event(7, clicked,
                                                     request_id=body["request_id"]))
        assert r.status_code == 201
        r = client.post("/api/v1/events", json={"events": [
            event(7, 1), event(7, 2, request_id="not-a-uuid")]})
        assert r.status_code == 422
        assert r.get_json()["error"]["field"] == "events[1].request_id"
        r = client.post("/api/v1/events", json=event(7, 2, request_id=12))
        assert (r.status_code, r.get_json()["error"]["field"]) == (422, "request_id")
        app.extensions["recs"].exposures.flush()
        joined = sql(dsn, "SELECT i.item_id, x.user_id, x.items FROM interactions i "
                          "JOIN exposures x ON x.request_id = i.request_id")
        assert joined == [(clicked, 7, ids(body))]
    finally:
        close(app)


def test_interleaving_serves_team_draft_and_logs_teams(published, settings):
    dsn = published
    add_experiment(dsn, "exp-il", AB_VARIANTS, kind="interleaving")
    app, client = reader(settings, dsn, experiment_holdout_fraction=0.0)
    try:
        for _ in range(5):
            body = client.get("/api/v1/recommendations/7?limit=6").get_json()
            assert (body["experiment_id"], body["variant"]) == ("exp-il", "interleaved")
            want = team_draft(LIVE_7[:6], V2_LIST[:6], 6, request_rng(7, body["request_id"]))
            assert ids(body) == list(want.items)
            assert len(set(ids(body))) == 6  # 10 and 11 are in both lists: shown once
            versions = [r["model_version"] for r in body["recommendations"]]
            assert versions == [[VERSION, V2][t] for t in want.teams]
            app.extensions["recs"].exposures.flush()
            row = exposures(dsn)[body["request_id"]]
            assert row[3] == "interleaved" and row[7] == list(want.teams)
            assert row[6] is None  # no exploration of an interleaved list
    finally:
        close(app)


def test_exploration_shuffles_the_top_k_and_logs_propensities(published, settings):
    dsn = published
    app, client = reader(settings, dsn, exploration_rate=1.0, exploration_top_k=3)
    try:
        shuffled = 0
        for _ in range(8):
            body = client.get("/api/v1/recommendations/7?limit=5").get_json()
            want = explore(LIVE_7[:5], 3, 1.0, request_rng(7, body["request_id"]))
            assert ids(body) == list(want.items)
            assert ids(body)[3:] == LIVE_7[3:5]
            shuffled += ids(body)[:3] != LIVE_7[:3]
            app.extensions["recs"].exposures.flush()
            props = exposures(dsn)[body["request_id"]][6]
            assert props == pytest.approx([1 / 3] * 3 + [1.0, 1.0])
        assert shuffled > 0
    finally:
        close(app)


def test_experiments_off_serves_and_logs_nothing_new(published, settings):
    dsn = published
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt_where(7, 9))
    s = settings.replace(reader_database_url=role_url(dsn, "recs_reader"),
                         experiments_enabled=0)
    app = create_app({"SETTINGS": s, "TESTING": True})
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = make_key(dsn, ("read",))
    try:
        body = client.get("/api/v1/recommendations/7?limit=3").get_json()
        assert body["experiment_id"] is None and ids(body) == LIVE_7[:3]
        assert uuid.UUID(body["request_id"])
        assert exposures(dsn) == {}
    finally:
        app.extensions["recs"].store.close()


@pytest.mark.integration
def test_gunicorn_flushes_queued_exposures_at_worker_exit(published, tmp_path):
    dsn = published
    add_experiment(dsn, "exp-ab", AB_VARIANTS, salt=salt_where(7, 9))
    # A long flush interval: the rows are still queued when the server is stopped.
    server = Gunicorn(dsn, tmp_path / "home", api_key=make_key(dsn, ("read",)), env={
        "RECS_READER_DATABASE_URL": role_url(dsn, "recs_reader"),
        "RECS_EXPOSURE_FLUSH_S": "60", "RECS_EXPOSURE_BATCH": "1000"})
    try:
        served = []
        for uid in (7, 8, 9) * 10:
            r = server.get(f"/api/v1/recommendations/{uid}?limit=3")
            assert r.status_code == 200
            served.append((r.json()["request_id"], uid, r.json()["variant"]))
        time.sleep(1.5)  # the workers' metrics files are written every second
        metrics = server.get("/metrics").text
        assert re.search(r'recs_exposures_total\{outcome="served"\} 30', metrics)
    finally:
        server.stop()
    rows = exposures(dsn)
    assert sorted((rid, row[0], row[3]) for rid, row in rows.items()) == sorted(served)
