"""Exploration propensities against their empirical frequencies, and off-policy estimates
against the known value of a target policy on simulated logs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.exploration import (
    doubly_robust,
    explore,
    ips,
    item_position_ips,
    position_propensity,
    snips,
)


def test_propensities_sum_to_one_and_match_frequencies():
    k, eps = 4, 0.2
    for q in range(6):
        assert sum(position_propensity(q, p, k, eps) for p in range(6)) == pytest.approx(1)
    ranking = list("abcdef")
    g = random.Random(0)
    n = 40_000
    counts = np.zeros((6, 6))
    for _ in range(n):
        e = explore(ranking, k, eps, g)
        for p, x in enumerate(e.items):
            counts[ranking.index(x), p] += 1
            assert e.propensities[p] == position_propensity(ranking.index(x), p, k, eps)
    expected = np.array([[position_propensity(q, p, k, eps) for p in range(6)]
                         for q in range(6)])
    se = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(counts / n - expected) <= 4 * se + 1e-12).all()
    assert counts[4, 4] == counts[5, 5] == n  # past the top k nothing moves


def test_no_exploration_keeps_the_order_and_short_lists_are_fine():
    g = random.Random(1)
    e = explore([3, 1, 2], 10, 0.0, g)
    assert e.items == (3, 1, 2) and e.propensities == (1.0, 1.0, 1.0) and not e.explored
    assert explore([], 5, 0.5, g).items == ()
    with pytest.raises(ValueError, match="epsilon"):
        explore([1], 1, 1.5, g)


# A contextual bandit with known mean rewards: the truth is exact.
N_CTX, N_ACT = 6, 4


def bandit(seed: int, n: int, reward: str = "bernoulli"):
    rng = np.random.default_rng(seed)
    mu = np.random.default_rng(100).uniform(0.05, 0.6, size=(N_CTX, N_ACT))
    ctx_p = np.full(N_CTX, 1 / N_CTX)
    logging = np.random.default_rng(101).dirichlet(np.ones(N_ACT) * 2, size=N_CTX)
    logging = 0.8 * logging + 0.2 / N_ACT  # every action at least 5%
    target = np.zeros((N_CTX, N_ACT))
    target[np.arange(N_CTX), mu.argmax(axis=1)] = 0.9  # mostly the best action
    target += 0.1 / N_ACT
    truth = float((ctx_p[:, None] * target * mu).sum())
    x = rng.integers(0, N_CTX, size=n)
    u = rng.random(n)[:, None]
    a = (u > logging[x].cumsum(axis=1)).sum(axis=1)
    if reward == "bernoulli":
        r = (rng.random(n) < mu[x, a]).astype("float64")
    else:  # a graded reward (say, watch fraction) with little noise around its mean
        r = mu[x, a] + rng.normal(0, 0.05, size=n)
    return mu, logging, target, truth, x, a, r


def test_snips_and_dr_recover_the_target_value():
    mu, logging, target, truth, x, a, r = bandit(0, 20_000)
    p, pi = logging[x, a], target[x, a]
    naive = r.mean()
    assert abs(naive - truth) > 0.05  # the log's own value is far from the target's
    noisy = mu + np.random.default_rng(7).normal(0, 0.05, size=mu.shape)
    for est in (ips(r, p, pi), snips(r, p, pi),
                doubly_robust(r, p, pi, noisy[x, a], (target * noisy).sum(axis=1)[x])):
        assert abs(est.value - truth) < 3 * est.se
        assert 0 < est.ess <= len(r)


def test_coverage_and_variance_over_seeds():
    """Across seeds: the 95% intervals cover the truth about 95% of the time; with a
    graded reward whose noise is small next to its spread across actions, DR with a
    decent model has lower variance than SNIPS (with 0/1 clicks the click noise itself
    dominates and the two are close); DR with a useless (constant) model is still
    unbiased."""
    cover = {"snips": 0, "dr": 0}
    vals = {"snips": [], "dr": [], "dr_const": []}
    seeds = range(60)
    for s in seeds:
        mu, logging, target, truth, x, a, r = bandit(s + 1, 3_000, reward="graded")
        p, pi = logging[x, a], target[x, a]
        noisy = mu + np.random.default_rng(s).normal(0, 0.03, size=mu.shape)
        sn = snips(r, p, pi)
        dr = doubly_robust(r, p, pi, noisy[x, a], (target * noisy).sum(axis=1)[x])
        const = np.full(len(r), 0.5)
        drc = doubly_robust(r, p, pi, const, const)
        cover["snips"] += abs(sn.value - truth) < 1.96 * sn.se
        cover["dr"] += abs(dr.value - truth) < 1.96 * dr.se
        vals["snips"].append(sn.value)
        vals["dr"].append(dr.value)
        vals["dr_const"].append(drc.value)
    assert cover["snips"] >= 0.85 * len(seeds) and cover["dr"] >= 0.85 * len(seeds)
    assert np.var(vals["dr"]) < 0.7 * np.var(vals["snips"])
    dc = np.array(vals["dr_const"])
    assert abs(dc.mean() - truth) < 3 * dc.std(ddof=1) / np.sqrt(len(dc))


def test_item_position_ips_from_explored_lists():
    """A ranking with poor order is logged with exploration of its top 5; a target that
    reorders the top 5 by true attractiveness is evaluated from that log under the
    item-position click model, against its exact expected clicks."""
    k, n_pos, eps = 5, 8, 0.3
    attract = {i: a for i, a in enumerate([0.1, 0.15, 0.2, 0.3, 0.6, 0.05, 0.05, 0.05])}
    bias = np.array([1 / np.log2(p + 2) for p in range(n_pos)])
    logged_ranking = list(range(n_pos))                   # best item (4) fifth
    target_ranking = [4, 3, 2, 1, 0, 5, 6, 7]             # top 5 by attractiveness
    truth = sum(bias[p] * attract[x] for p, x in enumerate(target_ranking))
    logged_value = sum(bias[p] * attract[x] for p, x in enumerate(logged_ranking))
    g = random.Random(3)
    rng = np.random.default_rng(3)
    n = 20_000
    shown = np.zeros((n, n_pos), dtype="int64")
    props = np.zeros((n, n_pos))
    for i in range(n):
        e = explore(logged_ranking, k, eps, g)
        shown[i], props[i] = e.items, e.propensities
    ctr = bias[None, :] * np.vectorize(attract.get)(shown)
    clicks = (rng.random((n, n_pos)) < ctr).astype("float64")
    target = np.tile(target_ranking, (n, 1))
    for sn in (False, True):
        est = item_position_ips(shown, props, clicks, target, self_normalised=sn)
        assert abs(est.value - truth) < 3 * est.se
        assert abs(est.value - logged_value) > 3 * est.se  # it sees the difference
    # The logging policy itself is recovered exactly in expectation too.
    same = item_position_ips(shown, props, clicks, np.tile(logged_ranking, (n, 1)))
    assert abs(same.value - logged_value) < 3 * same.se


def test_estimators_reject_bad_input():
    with pytest.raises(ValueError, match="propensities"):
        ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        snips([1.0, 0.0], [0.5], [1.0])
