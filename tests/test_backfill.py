"""Backfills: `airflow backfill create` over three dates, run by a real scheduler, gives
per date the same outputs as a separate run of that date, and re-running dates replaces
their outputs in place (no second version, partition or lake folder); the newest date
stays live through the backfill and the re-runs of the older dates.

Airflow starts as operators start it (cli/airflow_ui.py) in a private home with its own
Postgres and tiny synthetic data (200 users); the separate runs are the daily DAG's own
step functions in this process (jobs/daily.py:run_all, Spark in local mode), run after the
backfill over the same dates, so they are also the re-runs whose idempotence is checked.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import settings as settings_mod
from tests.test_airflow_ui import Site

pytestmark = [pytest.mark.airflow, pytest.mark.integration, pytest.mark.spark,
              pytest.mark.slow]

DATES = (dt.date(2026, 10, 29), dt.date(2026, 10, 30), dt.date(2026, 10, 31))
BACKFILL_BUDGET_S = 480


def lake_outputs(home: Path, day: dt.date) -> dict[str, pd.DataFrame]:
    lists = home / "lake" / "lists" / f"dt={day.isoformat()}"
    stats = home / "lake" / "item_stats" / f"dt={day.isoformat()}"
    pairs = home / "lake" / "pairs" / f"dt={day.isoformat()}"
    out = {"recommendations": pd.read_parquet(lists / "recommendations"),
           "similar": pd.read_parquet(lists / "similar.parquet"),
           "trending": pd.read_parquet(stats / "lists.parquet"),
           "pairs": pd.read_parquet(pairs / "full.parquet")}
    out["recommendations"] = out["recommendations"].sort_values("user_id", ignore_index=True)
    out["similar"] = out["similar"].sort_values("item_id", ignore_index=True)
    return out


def model_run(site: Site, day: dt.date) -> dict:
    rows = site.sql("SELECT model_version, n_users, n_items, n_interactions, data_from, "
                    "data_until, params, metrics FROM model_runs WHERE logical_date = %s",
                    (day,))
    assert len(rows) == 1, rows
    keys = ["version", "n_users", "n_items", "n_interactions", "data_from", "data_until",
            "params", "metrics"]
    return dict(zip(keys, rows[0], strict=True))


def assert_same_lists(a: pd.DataFrame, b: pd.DataFrame, key: str) -> None:
    assert a[key].tolist() == b[key].tolist()
    for x, y in zip(a["items"], b["items"], strict=True):
        assert list(x) == list(y)
    for x, y in zip(a["scores"], b["scores"], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for x, y in zip(a["reasons"], b["reasons"], strict=True):
        assert list(x) == list(y)


def test_backfill_equals_separate_runs_and_reruns_are_idempotent(monkeypatch):
    home = Path(tempfile.mkdtemp(prefix="recs-backfill-"))
    os.chmod(home, 0o755)  # the postgres user must reach var/pg when tests run as root
    site = Site(home)
    try:
        site.start(users=200, items=100, events=12000, days=20)
        from cli import airflow_ui

        s = settings_mod.load(env=site.env)
        port = int(site.ui.url.rsplit(":", 1)[1])
        env = airflow_ui.environ(s, port, base=site.env)
        # A paused DAG's backfill runs wait in the queue: unpause it first (operators do it
        # with the toggle in the UI or `recs airflow dags unpause daily`).
        assert site.api("/api/v2/dags/daily", "PATCH", {"is_paused": False})["is_paused"] \
            is False
        r = subprocess.run([str(Path(sys.executable).parent / "airflow"), "backfill",
                            "create", "--dag-id", "daily", "--from-date",
                            DATES[0].isoformat(), "--to-date", DATES[-1].isoformat()],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs = [x for x in site.api("/api/v2/dags/daily/dagRuns")["dag_runs"]
                if x["run_type"] == "backfill"]
        assert sorted(x["data_interval_end"][:10] for x in runs) == \
            [(d + dt.timedelta(days=1)).isoformat() for d in DATES]
        states = site.wait_for_runs("daily", [x["dag_run_id"] for x in runs],
                                    BACKFILL_BUDGET_S)
        assert set(states.values()) == {"success"}, states
        backfilled = {d: (lake_outputs(home, d), model_run(site, d)) for d in DATES}
        versions_before = site.sql("SELECT model_version FROM model_runs ORDER BY 1")
        # Whatever order the runs finished in, the newest date is live (only forward).
        newest = backfilled[DATES[-1]][1]["version"]
        assert site.sql("SELECT live_version FROM serving_state") == [(newest,)]

        # Separate runs of each date (the same steps, in this process), after the backfill.
        for key, value in site.env.items():
            if key.startswith("RECS_"):
                monkeypatch.setenv(key, value)
        monkeypatch.setattr(settings_mod, "_cached", None)
        from jobs import daily

        for day in DATES:
            daily.run_all(day)
            # A re-run of an older date neither goes live nor retires the newest one.
            assert site.sql("SELECT live_version FROM serving_state") == [(newest,)]
            lake_now, run_now = lake_outputs(home, day), model_run(site, day)
            lake_bf, run_bf = backfilled[day]
            assert_same_lists(lake_bf["recommendations"], lake_now["recommendations"],
                              "user_id")
            assert_same_lists(lake_bf["similar"], lake_now["similar"], "item_id")
            pd.testing.assert_frame_equal(lake_bf["trending"], lake_now["trending"])
            pd.testing.assert_frame_equal(lake_bf["pairs"], lake_now["pairs"])
            for k in ("version", "n_users", "n_items", "n_interactions", "data_from",
                      "data_until", "params"):
                assert run_bf[k] == run_now[k], k
            for model in ("als", "popularity"):
                for metric, value in run_bf["metrics"][model].items():
                    assert run_now["metrics"][model][metric] == \
                        pytest.approx(value, abs=1e-4), (model, metric)

        # Re-runs replaced outputs in place: same versions, one lake folder per date, no
        # temporary leftovers, at most one partition per version.
        assert site.sql("SELECT model_version FROM model_runs ORDER BY 1") == versions_before
        for dataset in ("items", "pairs", "als", "index", "lists", "item_stats"):
            names = sorted(p.name for p in (home / "lake" / dataset).iterdir())
            assert names == [f"dt={d.isoformat()}" for d in DATES], (dataset, names)
        # Events: one folder per event day (every day of the data, extracted once or
        # again for late events), and the extract's watermark; nothing temporary.
        names = {p.name for p in (home / "lake" / "event_days").iterdir()}
        days = sorted(names - {"_state.json"})
        assert "_state.json" in names and all(n.startswith("day=") for n in days), names
        assert days[-1] == f"day={max(DATES).isoformat()}", days
        parts = site.sql("""SELECT pg_get_expr(c.relpartbound, c.oid), count(*)
                            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                            WHERE i.inhparent = 'recommendations'::regclass GROUP BY 1""")
        assert parts and all(n == 1 for _, n in parts)
        assert (f"FOR VALUES IN ('{newest}')", 1) in parts
    finally:
        settings_mod._cached = None
        site.stop()
