"""The gate chooses what to publish: with a deliberately broken ranker (it orders every
user's candidates by item id), the daily steps publish the best generator's re-ranked
lists instead of the full pipeline's, record the choice and why, and the analyst view
shows it.

Real Postgres and the daily pipeline's own functions on small synthetic data; ALS and
co-visitation come from the tests' numpy references (tests/test_nearline.py) so no JVM
starts. Only the ranker's out-of-fold scores are replaced, by a broken ranker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg2
import pytest

from core import settings as settings_mod
from tests.test_nearline import DAY, daily_steps

pytestmark = pytest.mark.integration


@pytest.fixture
def broken_run(dsn, tmp_path, monkeypatch):
    from jobs.ingest.load import load_synthetic
    from jobs.ingest.synthetic import SyntheticConfig
    from models import gate

    for key, value in {"RECS_DATABASE_URL": dsn, "RECS_HOME": str(tmp_path / "home"),
                       "RECS_ALS_RANK": "8", "RECS_ALS_REG": "0.1", "RECS_TOP_K": "20",
                       "RECS_SIMILAR_K": "10", "RECS_TWO_TOWER_EPOCHS": "3",
                       "RECS_RANKER_EPOCHS": "3"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings_mod, "_cached", None)
    real = gate.crossfit_ranker

    def broken(pool, y, config, folds, **kw):
        ranker, _, info = real(pool, y, config, folds, **kw)
        return ranker, pool.cand.item.astype("float32"), info  # by item row, i.e. id

    monkeypatch.setattr(gate, "crossfit_ranker", broken)  # the name gate_table calls
    load_synthetic(SyntheticConfig(n_users=150, n_items=90, n_events=7000, n_days=20),
                   dsn=dsn)
    yield {**daily_steps(DAY), "dsn": dsn}
    settings_mod._cached = None


def test_broken_ranker_publishes_the_best_generator_instead(broken_run):
    from models.generators import SOURCES

    result, lists = broken_run["result"], broken_run["lists"]
    with psycopg2.connect(broken_run["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, metrics FROM model_runs WHERE model_version = %s",
                    (result["version"],))
        status, metrics = cur.fetchone()
        cur.execute("SELECT model, stage, ndcg_at_10 FROM model_run_figures "
                    "WHERE model_version = %s AND is_published_choice", (result["version"],))
        view_rows = cur.fetchall()
    choice = metrics["published_model"]
    best_generator = max(metrics["reranked"], key=lambda g: metrics["reranked"][g]["ndcg@10"])
    # The broken ranker loses to the generators; the best re-ranked generator is published.
    assert metrics["full_pipeline"]["ndcg@10"] < metrics["reranked"][best_generator]["ndcg@10"]
    assert choice["name"] == best_generator == result["model"] == lists["model"]
    assert choice["name"] in SOURCES and "full pipeline" in choice["reason"]
    assert choice["ndcg@10"] == metrics["reranked"][best_generator]["ndcg@10"]
    assert status == "published"
    assert view_rows == [(best_generator, "reranked",
                          pytest.approx(choice["ndcg@10"]))]
    # The published lists are that generator's: every item came from it, with a reason.
    recs = pd.read_parquet(lists["recommendations"])
    sources = np.concatenate(recs["sources"].to_numpy())
    assert set(sources) == {best_generator}
    assert all(len(r) == len(i) and all(r) for r, i in zip(recs["reasons"], recs["items"],
                                                           strict=True))
    with psycopg2.connect(broken_run["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT user_id) FROM live_recommendations")
        n_rows, n_users = cur.fetchone()
    assert n_rows == sum(len(i) for i in recs["items"]) and n_users == len(recs)


def _run_steps(day):
    """The daily steps from extract to precompute (no publish): (gate result, lists)."""
    out = daily_steps(day, publish=False)
    return out["result"], pd.read_parquet(out["lists"]["recommendations"])


def test_rerunning_a_date_gives_the_same_figures_and_lists(dsn, tmp_path, monkeypatch):
    from jobs.ingest.load import load_synthetic
    from jobs.ingest.synthetic import SyntheticConfig

    for key, value in {"RECS_DATABASE_URL": dsn, "RECS_HOME": str(tmp_path / "home"),
                       "RECS_ALS_RANK": "8", "RECS_TOP_K": "20", "RECS_SIMILAR_K": "10",
                       "RECS_TWO_TOWER_EPOCHS": "2", "RECS_RANKER_EPOCHS": "4"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings_mod, "_cached", None)
    load_synthetic(SyntheticConfig(n_users=120, n_items=80, n_events=5000, n_days=20),
                   dsn=dsn)
    first, lists1 = _run_steps(DAY)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT metrics FROM model_runs WHERE model_version = %s",
                    (first["version"],))
        (metrics1,) = cur.fetchone()
    second, lists2 = _run_steps(DAY)  # the same date again: every artefact rebuilt
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT metrics FROM model_runs WHERE model_version = %s",
                    (second["version"],))
        (metrics2,) = cur.fetchone()
    assert second["version"] == first["version"]
    timing = ("train_seconds", "features_seconds", "gate_seconds", "seconds")

    def scrub(m: dict) -> dict:  # timings differ from run to run; figures must not
        return {k: v for k, v in m.items()
                if k not in ("ranker_training", "two_tower_training", "index")}

    assert scrub(metrics2) == scrub(metrics1)
    t1 = {k: v for k, v in metrics1["ranker_training"].items() if k not in timing}
    t2 = {k: v for k, v in metrics2["ranker_training"].items() if k not in timing}
    assert t1 == t2
    pd.testing.assert_frame_equal(lists1, lists2)
