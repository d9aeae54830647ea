"""The daily experiment analysis on a seeded simulated log with a known truth, against the
real Postgres: exposures and the clicks, purchases and pre-period events that answer them
are written straight into ``exposures`` / ``interactions`` (the reader's logging is
another engineer's part); the analysis must find the planted lift, flag a planted
sample-ratio mismatch, decide an interleaving experiment, and replace a day on re-run.
Also the DAG: it parses, with its graph and policy."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from core import db
from jobs import experiment_analysis as ana
from jobs import experiments as registry
from models import experiment_sim as sim
from models.interleaving import request_rng, team_draft
from tests.conftest import role_url
from tests.dagparse import parse

START = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
DAY = dt.date(2025, 3, 3)  # analysed through the end of this day
K = 10
CONFIG = ana.AnalysisConfig(t_star=2000, min_users=100)


def define(dsn: str, key: str, kind: str = "ab", weights=(0.5, 0.5),
           layer: str = "default") -> None:
    names = ["control", "treatment", "third"][:len(weights)]
    variants = [registry.Variant(n, w) for n, w in zip(names, weights, strict=True)]
    registry.create(dsn, registry.build(key, layer=layer, variants=variants), kind)
    registry.start(dsn, key)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:  # a start in the past
        cur.execute("UPDATE experiments SET starts_at = %s WHERE experiment_key = %s",
                    (START, key))


def planted_log(n: int, lift: float, seed: int, drop_treated: float = 0.0,
                both_variants: int = 0) -> dict:
    """Per-exposure rows and events of an A/B test from models/experiment_sim's
    population: each user is served A or B for all their impressions; B's slots are
    ``1 + lift`` times as likely to be clicked (position bias as in the simulation); a
    click is a purchase with probability 0.2; the pre-period clicks follow the same
    propensity over the pre-period impressions. ``drop_treated`` loses that share of
    treated users' exposures (a logging bug: an SRM); ``both_variants`` users are served
    both (a routing bug)."""
    rng = np.random.default_rng(seed)
    pop = sim.population(n, rng, sim.PopulationConfig(heterogeneity=0.5,
                                                       mean_impressions=8, k=K))
    bias = sim.position_bias(K)
    treated = rng.random(n) < 0.5
    exposures, events, pre = [], [], []
    span = (dt.datetime.combine(DAY, dt.time(), dt.UTC) + dt.timedelta(days=1)
            - START).total_seconds()
    for u in range(n):
        user = 10_000 + u
        if treated[u] and rng.random() < drop_treated:
            continue
        for m in range(int(pop.impressions[u])):
            b = bool(treated[u]) if u >= both_variants else bool(m % 2)
            at = START + dt.timedelta(seconds=float(rng.random()) * span * 0.98)
            rid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            items = [(200 if b else 100) + p for p in range(K)]
            exposures.append((rid, at, user, "recommendations", None,
                              "treatment" if b else "control", items))
            p = np.minimum(pop.theta[u] * bias * (1 + lift if b else 1.0), 1.0)
            for pos in np.flatnonzero(rng.random(K) < p):
                ts = at + dt.timedelta(seconds=30)
                events.append((user, items[pos], "click", ts, rid))
                if rng.random() < 0.2:
                    events.append((user, items[pos], "purchase", ts + dt.timedelta(seconds=5),
                                   rid))
        pre_p = min(pop.theta[u], 1.0)
        for _ in range(int(rng.binomial(int(pop.pre_impressions[u]) * K, pre_p))):
            pre.append((user, 1, "click", START - dt.timedelta(days=3), None))
    return {"exposures": exposures, "events": events + pre, "treated": treated}


def load_log(dsn: str, key: str, log: dict) -> None:
    """COPY the log's exposures (as ``key``) and events into the tables."""
    teams = log.get("teams", {})
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        db.copy_rows(cur, "exposures", ("request_id", "served_at", "user_id", "endpoint",
                                        "experiment_key", "variant", "items", "teams"),
                     [(rid, at, user, ep, key, variant, items, teams.get(rid))
                      for rid, at, user, ep, _, variant, items in log["exposures"]])
        cur.execute("SELECT coalesce(max(event_id), 0) FROM interactions")
        first = cur.fetchone()[0] + 1
        db.copy_rows(cur, "interactions", ("event_id", "user_id", "item_id", "event_type",
                                           '"timestamp"', "request_id"),
                     [(first + i, *e) for i, e in enumerate(log["events"])])


def results(dsn: str, key: str, day: dt.date = DAY) -> dict:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT variant, metric, method, users, exposures, mean, diff, low, high, "
                    "p_value, p_adjusted, details FROM experiment_results "
                    "WHERE experiment_key = %s AND day = %s", (key, day))
        return {r[:3]: r[3:] for r in cur.fetchall()}


def decision(dsn: str, key: str, day: dt.date = DAY):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT action, reason, srm_p_value, details FROM experiment_decisions "
                    "WHERE experiment_key = %s AND day = %s", (key, day))
        return cur.fetchall()


@pytest.fixture
def planted(settings, dsn):
    """3,000 users, a planted 30% CTR lift, 4 users served both variants."""
    define(dsn, "lift")
    log = planted_log(3000, 0.3, seed=7, both_variants=4)
    load_log(dsn, "lift", log)
    return log


def test_detects_the_planted_lift(planted, settings, dsn, capsys):
    out = ana.run_one(dsn, "lift", DAY, config=CONFIG)
    assert out["action"] == "ship", out["reason"]
    r = results(dsn, "lift")
    users, exposures, mean_c = r[("control", "ctr", "welch")][:3]
    _, _, mean_t, diff, low, high, p, p_adj, det = r[("treatment", "ctr", "welch")]
    # The realised relative lift is about the planted 30%, and inside the interval.
    assert low > 0 and low <= 0.3 * mean_c <= high, (low, 0.3 * mean_c, high)
    assert 0.15 < diff / mean_c < 0.45
    assert p < 1e-6 and p <= p_adj <= 2 * p  # Holm over two metrics
    seq = r[("treatment", "ctr", "sequential")]
    assert seq[4] > 0 and seq[5] - seq[4] > high - low  # the sequence is wider than Welch
    cuped = r[("treatment", "ctr", "cuped")]
    assert cuped[-1]["variance_reduction"] > 0.02  # pre-period click counts: a weak covariate
    assert cuped[5] - cuped[4] < high - low
    assert r[("treatment", "conversion", "welch")][3] > 0  # purchases follow clicks
    d = decision(dsn, "lift")
    (action, reason, srm_p, details), = d
    assert action == "ship" and "ctr better" in reason and srm_p > 0.001
    assert details["multiple_exposure_users"] == 4 and not details["srm_flagged"]
    assert sum(details["users_per_variant"].values()) == 3000 - 4
    png = Path(out["plot"])
    assert png == Path(settings.lake) / "experiments" / "lift" / f"dt={DAY}" / "plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from cli.main import main
    assert main(["experiments", "report", "lift"]) == 0
    printed = capsys.readouterr().out
    assert f"analysis through {DAY}" in printed and "SHIP: treatment: ctr better" in printed

    # The analysts' view, as the analysts' role.
    with psycopg2.connect(role_url(dsn, "recs_analyst")) as conn, conn.cursor() as cur:
        cur.execute("SELECT relative_diff, excludes_zero, is_primary FROM experiment_summary "
                    "WHERE experiment_key = 'lift' AND variant = 'treatment' "
                    "AND metric = 'ctr' AND method = 'welch'")
        rel, excludes, primary = cur.fetchone()
        assert rel == pytest.approx(diff / mean_c) and excludes and primary
        cur.execute("SELECT action FROM experiment_latest_decisions")
        assert cur.fetchall() == [("ship",)]


def test_rerun_of_a_day_replaces_it(planted, settings, dsn):
    ana.run_one(dsn, "lift", DAY, config=CONFIG)
    first = results(dsn, "lift")
    png = Path(ana.plot_path("lift", DAY)).read_bytes()
    ana.run_one(dsn, "lift", DAY - dt.timedelta(days=1), config=CONFIG)
    earlier = results(dsn, "lift", DAY - dt.timedelta(days=1))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO experiment_results (experiment_key, day, variant, metric, "
                    "method, users, exposures) VALUES ('lift', %s, 'ghost', 'ctr', 'welch', "
                    "1, 1)", (DAY,))
    ana.run_one(dsn, "lift", DAY, config=CONFIG)
    assert results(dsn, "lift") == first  # the ghost row is gone, nothing doubled
    assert len(decision(dsn, "lift")) == 1
    assert results(dsn, "lift", DAY - dt.timedelta(days=1)) == earlier  # untouched
    # Cumulative: the earlier day saw fewer users.
    assert earlier[("control", "ctr", "welch")][0] < first[("control", "ctr", "welch")][0]
    assert Path(ana.plot_path("lift", DAY)).read_bytes() == png


def test_flags_a_planted_sample_ratio_mismatch(settings, dsn):
    define(dsn, "srm")
    log = planted_log(3000, 0.0, seed=11, drop_treated=0.2)
    load_log(dsn, "srm", log)
    out = ana.run_one(dsn, "srm", DAY, config=CONFIG)
    (action, reason, srm_p, details), = decision(dsn, "srm")
    assert action == "stop" == out["action"]
    assert srm_p < 0.001 and details["srm_flagged"]
    assert reason.startswith("sample ratio mismatch")
    n = details["users_per_variant"]
    assert n["treatment"] < 0.9 * n["control"]


def test_an_a_a_experiment_is_not_shipped(settings, dsn):
    define(dsn, "aa")
    load_log(dsn, "aa", planted_log(3000, 0.0, seed=5))
    ana.run_one(dsn, "aa", DAY, config=CONFIG)
    (action, reason, srm_p, details), = decision(dsn, "aa")
    assert action == "keep running" and srm_p > 0.001, reason
    assert details["multiple_exposure_users"] == 0


def interleaved_log(n: int, lift: float, seed: int) -> dict:
    """Team-draft interleaving (the real ``team_draft``) of A (items 100..) and B (items
    200..) for every impression; a slot of team B is ``1 + lift`` times as likely to be
    clicked."""
    rng = np.random.default_rng(seed)
    pop = sim.population(n, rng, sim.PopulationConfig(heterogeneity=1.0,
                                                       mean_impressions=8, k=K))
    bias = sim.position_bias(K)
    a, b = [100 + i for i in range(K)], [200 + i for i in range(K)]
    exposures, events, teams = [], [], {}
    for u in range(n):
        user = 20_000 + u
        for _ in range(int(pop.impressions[u])):
            rid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            shown = team_draft(a, b, K, request_rng(user, rid))
            at = START + dt.timedelta(hours=float(rng.random()) * 40)
            exposures.append((rid, at, user, "recommendations", None, None,
                              list(shown.items)))
            teams[rid] = list(shown.teams)
            p = np.minimum(pop.theta[u] * bias * np.where(np.array(shown.teams) == 1,
                                                          1 + lift, 1.0), 1.0)
            for pos in np.flatnonzero(rng.random(K) < p):
                events.append((user, shown.items[pos], "click", at + dt.timedelta(seconds=9),
                               rid))
    return {"exposures": exposures, "events": events, "teams": teams}


def test_interleaving_finds_the_better_ranker(settings, dsn):
    define(dsn, "il", kind="interleaving")
    load_log(dsn, "il", interleaved_log(800, 0.3, seed=3))
    out = ana.run_one(dsn, "il", DAY, config=CONFIG)
    assert out["action"] == "ship", out["reason"]
    r = results(dsn, "il")
    users, exposures, mean, diff, low, high, p, p_adj, det = \
        r[("treatment", "preference", "interleaving")]
    assert users == 800 and low > 0 and p < 0.001
    assert det["prefer_treatment"] > det["prefer_control"]
    assert "treatment preferred" in out["reason"]


def test_a_config_field_out_of_range_is_named():
    with pytest.raises(ValueError, match="multitest: 'bonferroni'"):
        ana.AnalysisConfig(multitest="bonferroni")
    with pytest.raises(ValueError, match="alpha: 1.5"):
        ana.AnalysisConfig(alpha=1.5)


def test_which_experiments_are_due(settings, dsn):
    define(dsn, "running", layer="a")
    define(dsn, "stopped-long-ago", layer="b")
    define(dsn, "stopped-lately", layer="c")
    registry.create(dsn, registry.build("draft", variants=[registry.Variant("a", 0.5),
                                                           registry.Variant("b", 0.5)]))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE experiments SET status = 'stopped', stopped_at = %s "
                    "WHERE experiment_key = 'stopped-long-ago'", (START,))
        cur.execute("UPDATE experiments SET status = 'stopped', stopped_at = %s "
                    "WHERE experiment_key = 'stopped-lately'",
                    (START + dt.timedelta(days=20),))
    later = DAY + dt.timedelta(days=20)
    assert ana.experiments_for(dsn, later) == ["running", "stopped-lately"]
    # Before any start: nothing.
    assert ana.experiments_for(dsn, START.date() - dt.timedelta(days=1)) == []


# --- the DAG -------------------------------------------------------------------------------------

@pytest.mark.airflow
def test_dag_parses_with_its_graph_and_policy(tmp_path):
    parsed = parse(tmp_path)
    assert parsed["errors"] == {}
    dag = parsed["dags"]["experiments"]
    assert {t: v["downstream"] for t, v in dag["tasks"].items()} == \
        {"due": ["analyse"], "analyse": []}
    assert dag["tags"] == ["experiments", "recs"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["timetable_args"]["expression"] == "30 1 * * *"
    for t in dag["tasks"].values():
        assert t["retries"] == 2 and t["timeout"] is not None


@pytest.mark.airflow
@pytest.mark.slow
def test_the_dag_analyses_a_running_experiment(planted, settings, dsn, monkeypatch):
    """One real run of the ``experiments`` DAG (`airflow dags test`, metadata in the test
    database): ``due`` finds the running experiment and the mapped ``analyse`` writes its
    results and decision."""
    from cli import main as cli_main
    from core.db import sqlalchemy_url

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sqlalchemy_url(dsn))
    cli_main.airflow_db_ready(settings)
    cli_main.airflow(settings, "dags", "test", "experiments", "2025-03-04T01:30:00+00:00",
                     capture=True)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM dag_run WHERE dag_id = 'experiments'")
        assert cur.fetchall() == [("success",)]
        cur.execute("SELECT DISTINCT day FROM experiment_decisions "
                    "WHERE experiment_key = 'lift'")
        days = [r[0] for r in cur.fetchall()]
    assert len(days) == 1 and days[0] >= DAY, days
    assert results(dsn, "lift", days[0]), "no results for the analysed day"
