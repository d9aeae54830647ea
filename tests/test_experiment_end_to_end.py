"""Experiments end to end with a known truth (issue 13, item 7): a simulated population
asks the real reader (the Flask app as ``recs_reader``, real Postgres) for its lists,
clicks on what it is shown, and posts the clicks with the answer's ``request_id`` to
``POST /api/v1/events``; the reader's own exposure log and the events are all the
analysis (``recs experiments analyse``) sees.

The truth is planted in the items, not in the variants: two published versions whose
lists hold disjoint items, the treatment version's items ``1 + LIFT`` times as attractive
(``models/experiment_sim``'s click model: the user's propensity times the position bias
times the item's attractiveness). A variant reaches the analysis only if the reader routed
the user, served that variant's version and logged what it served; the real-time parts
of the reader (clicked items leave the next lists, exploration reorders the top five of a
few answers) run as in production.

One seeded population per test, sized so that the planted lift is found with power close
to 1 (the A/B test's difference about 6 standard errors, the interleaving test at
p ~ 1e-9): the power
and the false-positive rate over many seeds are checked on the compute core
(tests/test_experiment_simulation.py), where thousands of runs are cheap."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import psycopg2
import psycopg2.extras
import pytest

from cli.main import main
from models import experiment_sim as sim
from tests.test_experiments_serve import V2, close, reader, sql
from tests.test_serve import VERSION, publish_fixture

pytestmark = pytest.mark.integration

LIFT = 0.5
K = 10                                  # items shown per request
FIRST_USER = 50_000
MAX_IMPRESSIONS = 8
# Every user's list in VERSION (live: the control's) and in V2 (the treatment's): long
# enough that the clicked items the reader leaves out never exhaust a list.
CONTROL_ITEMS = list(range(1000, 1000 + MAX_IMPRESSIONS * K * 2))
TREATMENT_ITEMS = list(range(5000, 5000 + MAX_IMPRESSIONS * K * 2))
ATTRACT = {**{i: 1.0 for i in CONTROL_ITEMS}, **{i: 1.0 + LIFT for i in TREATMENT_ITEMS}}


def publish_population(dsn: str, users: list[int], rng: np.random.Generator) -> None:
    """Both versions (V2 kept, VERSION live) with a list for every simulated user: a
    per-user shuffle of the version's items, so positions do not favour one item."""
    publish_fixture(dsn, version=V2)
    publish_fixture(dsn)
    rows = []
    for version, pool in ((VERSION, CONTROL_ITEMS), (V2, TREATMENT_ITEMS)):
        for u in users:
            items = [int(i) for i in rng.permutation(pool)]
            rows.append((version, u, items, [1.0 - 0.001 * p for p in range(len(items))],
                         ["Popular with viewers like you"] * len(items),
                         [None] * len(items), [], dt.datetime.now(dt.UTC)))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO items (item_id, title, category) VALUES %s",
            [(i, f"Simulated {i}", "drama") for i in CONTROL_ITEMS + TREATMENT_ITEMS])
        psycopg2.extras.execute_values(
            cur, "INSERT INTO recommendations (model_version, user_id, items, scores, "
                 "reasons, reason_item_ids, history_tail, computed_at) VALUES %s", rows)


def simulate(client, pop: sim.Population, users: list[int], rng: np.random.Generator
             ) -> dict[str, int]:
    """Each user asks for ``K`` items ``impressions`` times (at most
    ``MAX_IMPRESSIONS``) and posts the clicks; the variants the reader answered with,
    counted."""
    bias = sim.position_bias(K)
    answered: dict[str, int] = {}
    for u, user in enumerate(users):
        for _ in range(min(int(pop.impressions[u]), MAX_IMPRESSIONS)):
            r = client.get(f"/api/v1/recommendations/{user}?limit={K}")
            assert r.status_code == 200, r.get_data(as_text=True)
            body = r.get_json()
            answered[str(body["variant"])] = answered.get(str(body["variant"]), 0) + 1
            shown = [x["item_id"] for x in body["recommendations"]]
            assert len(shown) == K and not body["fallback"], body
            assert set(shown) <= set(ATTRACT), body  # never topped up from popular
            attract = np.array([ATTRACT[i] for i in shown])
            clicked = rng.random(K) < np.minimum(pop.theta[u] * attract * bias, 1.0)
            events = [{"user_id": user, "item_id": shown[p], "event_type": "click",
                       "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                       "request_id": body["request_id"]} for p in np.flatnonzero(clicked)]
            if events:
                r = client.post("/api/v1/events", json={"events": events})
                assert r.status_code in (200, 201, 202), r.get_data(as_text=True)
    return answered


def run_experiment(dsn: str, settings, key: str, kind: str, n: int, seed: int,
                   treatment: dict | None = None, **reader_config
                   ) -> tuple[dict[str, int], dict, dt.date]:
    """Define and start ``key`` with ``recs experiments`` (the treatment's changes: serve
    V2 unless ``treatment`` says otherwise), let ``n`` simulated users use the reader
    (``reader_config``: its settings), drain its exposure log (as at a worker's exit) and
    run the analysis with ``recs experiments analyse``; the variants answered, the
    exposure counters and the analysed day."""
    rng = np.random.default_rng(seed)
    users = list(range(FIRST_USER, FIRST_USER + n))
    publish_population(dsn, users, rng)
    changes = json.dumps({"model_version": V2} if treatment is None else treatment)
    assert main(["experiments", "create", key, "--kind", kind, "--variant", "control=0.5",
                 "--variant", f"treatment=0.5:{changes}"]) == 0
    assert main(["experiments", "start", key]) == 0
    pop = sim.population(n, rng, sim.PopulationConfig(base_ctr=0.08, heterogeneity=0.5,
                                                       mean_impressions=4, k=K))
    # One key asks for the whole population, as an application's back end does, faster
    # than the default per-key rate.
    app, client = reader(settings, dsn, key_rate_per_s=1e6, **reader_config)
    try:
        answered = simulate(client, pop, users, rng)
    finally:
        svc = app.extensions["recs"]
        close(app)  # drains the queue, as gunicorn's worker_exit hook does
    counts = {dict(labels)["outcome"]: int(value)
              for name, labels, value in svc.metrics.snapshot()["counters"]
              if name == "recs_exposures_total"}
    day = dt.datetime.now(dt.UTC).date()
    assert main(["experiments", "analyse", "--date", day.isoformat(), "--key", key]) == 0
    return answered, counts, day


def result(dsn: str, key: str, day: dt.date, variant: str, metric: str, method: str):
    rows = sql(dsn, "SELECT users, exposures, mean, diff, low, high, p_value "
                    "FROM experiment_results WHERE experiment_key = %s AND day = %s "
                    "AND variant = %s AND metric = %s AND method = %s",
               (key, day, variant, metric, method))
    assert len(rows) == 1, (variant, metric, method)
    return rows[0]


def test_ab_lift_planted_in_the_items_is_found_through_the_reader(settings, dsn, capsys):
    answered, counts, day = run_experiment(dsn, settings, "e2e-ab", "ab", n=1000, seed=3)
    assert {"control", "treatment"} <= set(answered)
    # Every list served was logged; nothing dropped.
    served = sum(answered.values())
    assert counts["served"] == counts["logged"] == served and counts.get("dropped", 0) == 0
    logged = sql(dsn, "SELECT variant, count(*) FROM exposures GROUP BY 1")
    assert {str(v): c for v, c in logged} == answered
    # The clicks reached the analysis only through request ids joining the log.
    assert sql(dsn, "SELECT count(*) FROM interactions WHERE request_id IS NULL") == [(0,)]

    users_c, exp_c, mean_c, *_ = result(dsn, "e2e-ab", day, "control", "ctr", "welch")
    users_t, exp_t, mean_t, diff, low, high, p = result(dsn, "e2e-ab", day, "treatment",
                                                        "ctr", "welch")
    (in_test,), = sql(dsn, "SELECT count(DISTINCT user_id) FROM exposures "
                           "WHERE variant IS NOT NULL")
    assert users_c + users_t == in_test > 0.95 * 1000  # (the 1% holdout sees no variant)
    assert exp_c == answered["control"] and exp_t == answered["treatment"]
    # The planted relative lift is inside the interval, and the test is far from zero.
    assert low > 0 and low <= LIFT * mean_c <= high, (low, LIFT * mean_c, high)
    assert p < 1e-4
    (action, reason), = sql(dsn, "SELECT action, reason FROM experiment_decisions "
                                 "WHERE experiment_key = 'e2e-ab'")
    assert action == "ship" and "ctr better" in reason, reason
    assert main(["experiments", "report", "e2e-ab"]) == 0
    assert "SHIP: treatment: ctr better" in capsys.readouterr().out


def test_interleaving_prefers_the_planted_ranker_through_the_reader(settings, dsn):
    answered, counts, day = run_experiment(dsn, settings, "e2e-il", "interleaving",
                                           n=300, seed=5)
    assert set(answered) <= {"interleaved", "None"} and answered["interleaved"] > 0
    assert counts["served"] == counts["logged"] and counts.get("dropped", 0) == 0
    # Every interleaved list: half of each team (two disjoint lists, team draft).
    teams = sql(dsn, "SELECT teams FROM exposures WHERE variant = 'interleaved'")
    assert teams and all(sorted(t) == [0] * (K // 2) + [1] * (K // 2) for (t,) in teams)
    users, _, mean, diff, low, high, p = result(dsn, "e2e-il", day, "treatment",
                                                "preference", "interleaving")
    assert users >= 100 and p < 1e-4
    assert low > 0, (low, high)  # the users prefer the treatment's items
    (action, reason), = sql(dsn, "SELECT action, reason FROM experiment_decisions "
                                 "WHERE experiment_key = 'e2e-il'")
    assert action == "ship", reason


def test_a_a_through_the_reader_is_not_shipped(settings, dsn):
    """Both variants serve the live version. Exploration off, so that the run is
    deterministic (request ids are random, and they seed exploration's shuffles): the
    decision of an A/A test is 'keep running' for all but a small share of seeds
    (tests/test_experiment_simulation.py measures the rate over many)."""
    answered, counts, day = run_experiment(dsn, settings, "e2e-aa", "ab", n=600, seed=3,
                                           treatment={}, exploration_rate=0.0)
    assert {"control", "treatment"} <= set(answered)
    assert sql(dsn, "SELECT DISTINCT model_version FROM exposures") == [(VERSION,)]
    *_, diff, low, high, p = result(dsn, "e2e-aa", day, "treatment", "ctr", "welch")
    assert low < 0 < high and p > 0.05
    (action, srm_p), = sql(dsn, "SELECT action, srm_p_value FROM experiment_decisions "
                                "WHERE experiment_key = 'e2e-aa'")
    assert action == "keep running" and srm_p > 0.001
