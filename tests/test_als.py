"""Spark MLlib ALS against the numpy reference solve on a tiny matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.train_als import AlsParams, spark_session, train
from models import als as ref

pytestmark = pytest.mark.spark

# Two blocks of taste (a checkerboard-like matrix): users 0-3 like items 0-3, users 4-7
# like items 4-7, with graded weights and two cross-over interactions.
MATRIX = np.zeros((8, 8))
for u in range(8):
    block = range(0, 4) if u < 4 else range(4, 8)
    for j, i in enumerate(block):
        if (u + j) % 4 != 3:
            MATRIX[u, i] = 1.0 + (u + i) % 3
MATRIX[1, 6] = 1.0
MATRIX[6, 1] = 1.0


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[1]", app="recs-test-als")
    yield session
    session.stop()


def _pairs(matrix: np.ndarray, user_offset: int = 100, item_offset: int = 10_000):
    u, i = np.nonzero(matrix)
    return pd.DataFrame({"user_id": u + user_offset, "item_id": i + item_offset,
                         "weight": matrix[u, i]})


def test_spark_user_factors_are_the_reference_solve_given_its_item_factors(spark):
    params = AlsParams(rank=3, reg=0.1, alpha=2.0, iters=10, seed=7)
    factors = train(spark, _pairs(MATRIX), params)
    # Ids map back to the originals, in sorted order.
    assert list(factors.user_ids) == list(range(100, 108))
    assert list(factors.item_ids) == list(range(10_000, 10_008))
    # Spark's last half-step solves users given the final item factors: the numpy
    # solve with the same objective must give the same vectors.
    rows = [np.nonzero(MATRIX[u])[0] for u in range(8)]
    expected = ref.solve_users(factors.item_factors, rows,
                               [MATRIX[u, r] for u, r in enumerate(rows)],
                               params.reg, params.alpha)
    np.testing.assert_allclose(factors.user_factors, expected, rtol=1e-3, atol=1e-4)


def test_spark_and_numpy_als_agree_on_predictions(spark):
    params = AlsParams(rank=3, reg=0.1, alpha=2.0, iters=15, seed=3)
    factors = train(spark, _pairs(MATRIX), params)
    users, items = ref.fit(MATRIX, rank=3, reg=0.1, alpha=2.0, iters=15, seed=3)
    spark_scores = factors.user_factors @ factors.item_factors.T
    numpy_scores = users @ items.T
    # Different random starts, same objective: the fitted preference matrices match.
    np.testing.assert_allclose(spark_scores, numpy_scores, atol=0.05)
    # And both put each user's own block first.
    for u in range(8):
        block = set(range(0, 4)) if u < 4 else set(range(4, 8))
        assert set(np.argsort(-spark_scores[u])[:3]) <= block | {1, 6}


def test_training_is_seeded(spark):
    params = AlsParams(rank=3, reg=0.1, alpha=2.0, iters=5, seed=11)
    a = train(spark, _pairs(MATRIX), params)
    b = train(spark, _pairs(MATRIX), params)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        AlsParams(rank=0)
