"""`recs evaluate`: the benchmark table on a small MovieLens folder, end to end.

A folder in MovieLens' own format is cut from ml-latest-small (the ratings of 120 users
drawn with a fixed seed, with the movies and tags files); `recs evaluate` trains every
model of the funnel on it (Spark ALS and co-visitation, the two-tower model, EASE, the
ranker) and writes the table. Short epochs keep it to about a minute; the full-size
figures are benchmarks (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest

from core.settings import PROJECT_ROOT

pytestmark = [pytest.mark.spark, pytest.mark.slow]
RECS = str(PROJECT_ROOT / ".venv" / "bin" / "recs")


@pytest.fixture(scope="module")
def small_movielens(tmp_path_factory, ml_small):
    out = tmp_path_factory.mktemp("ml-tiny")
    ratings = pd.read_csv(ml_small / "ratings.csv")
    users = ratings["userId"].drop_duplicates().sample(120, random_state=0)
    ratings = ratings[ratings["userId"].isin(users)]
    ratings.to_csv(out / "ratings.csv", index=False)
    movies = pd.read_csv(ml_small / "movies.csv")
    movies[movies["movieId"].isin(ratings["movieId"])].to_csv(out / "movies.csv", index=False)
    tags = pd.read_csv(ml_small / "tags.csv")
    tags[tags["movieId"].isin(ratings["movieId"])].to_csv(out / "tags.csv", index=False)
    return out


def test_recs_evaluate_writes_one_table_with_every_model(small_movielens, tmp_path):
    env = {**os.environ, "RECS_HOME": str(tmp_path / "home"), "RECS_TWO_TOWER_EPOCHS": "2",
           "RECS_RANKER_EPOCHS": "4", "RECS_ALS_ITERS": "10", "RECS_SPARK_MASTER": "local[2]"}
    env.pop("RECS_DATABASE_URL", None)
    out = tmp_path / "report"
    r = subprocess.run([RECS, "evaluate", "--data", str(small_movielens), "--out", str(out)],
                       env=env, text=True, capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads((out / "evaluation.json").read_text())
    results = table["results"]
    rows = {k: v for k, v in results.items() if k not in ("reranked", "published_model")}
    expected = {"popularity", "als", "two_tower", "ease", "itemknn", "covisit",
                "covisit_history", "text", "trending", "new", "ranker", "full_pipeline"}
    assert expected <= set(rows), set(rows)
    # The gate's choice: the best of the full pipeline and the re-ranked generators.
    choice = results["published_model"]
    options = {"full_pipeline": rows["full_pipeline"]["ndcg@10"],
               **{g: m["ndcg@10"] for g, m in results["reranked"].items()}}
    assert choice["ndcg@10"] == max(options.values()) == options[choice["name"]]
    # Settings that differ from the shipped defaults are named in the report.
    changed = table["params"]["changed"]
    assert set(changed) == {"two_tower_epochs", "two_tower", "ranker_epochs", "ranker",
                            "als_iters"}, changed
    assert changed["two_tower"]["epochs"] == 2 and changed["ranker"]["epochs"] == 4
    assert "settings changed from the defaults" in r.stdout
    for model, m in rows.items():
        for key in ("precision@10", "recall@10", "ndcg@10", "map", "coverage",
                    "diversity@10"):
            assert 0.0 <= m[key] <= 1.0, (model, key, m[key])
        assert m["novelty@10"] >= 0.0
    # The funnel beats popularity even on this small cut.
    assert rows["full_pipeline"]["ndcg@10"] > rows["popularity"]["ndcg@10"], rows
    assert table["ranker"]["candidates_per_user"] > 100
    assert 0.0 < table["ranker"]["candidate_recall"] <= 1.0
    md_rows = {line.split("|")[1].strip() for line in
               (out / "evaluation.md").read_text().splitlines() if line.startswith("| ")}
    assert expected | {"published"} <= md_rows, md_rows
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "full_pipeline" in r.stdout


def test_recs_evaluate_names_a_folder_that_is_not_movielens(tmp_path):
    r = subprocess.run([RECS, "evaluate", "--data", str(tmp_path)], text=True,
                       capture_output=True, timeout=120,
                       env={**os.environ, "RECS_HOME": str(tmp_path / "home")})
    assert r.returncode == 2
    assert str(tmp_path) in r.stderr and "Traceback" not in r.stderr
