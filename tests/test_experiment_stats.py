"""Experiment statistics: Welch by hand and by coverage, CUPED's variance reduction, the
confidence sequence's time-uniform coverage against peeking at Welch, Holm and BH by hand,
the SRM check and every branch of decide()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from models.experiment_stats import (
    KEEP,
    SHIP,
    STOP,
    Interval,
    adjust,
    confidence_sequence,
    confidence_sequence_path,
    cs_radius,
    cuped,
    cuped_theta,
    decide,
    multiple_exposure,
    srm,
    welch,
)


def test_welch_by_hand():
    rng = np.random.default_rng(0)
    c, t = rng.normal(1.0, 1.0, 50), rng.normal(1.5, 2.0, 80)
    vc, vt = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    df = (vc + vt) ** 2 / (vc ** 2 / (len(c) - 1) + vt ** 2 / (len(t) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(vc + vt)
    d = t.mean() - c.mean()
    got = welch(c, t)
    assert got.diff == pytest.approx(d)
    assert (got.low, got.high) == pytest.approx((d - half, d + half))
    assert got.p_value == pytest.approx(2 * stats.t.sf(abs(d) / math.sqrt(vc + vt), df))
    assert got.relative == pytest.approx(d / c.mean())


def test_welch_covers_a_planted_difference_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(1000):
        c = rng.exponential(1.0, 200)
        t = rng.exponential(1.0, 300) + 0.1
        iv = welch(c, t)
        hits += iv.low < 0.1 < iv.high
    assert stats.binomtest(hits, 1000, 0.95).pvalue > 1e-3


def pre_post(rng, n, effect, rho):
    """Pre-period x and in-period y with correlation rho; treatment adds effect to y."""
    x = rng.normal(10, 2, n)
    y = 10 + rho * (x - 10) + math.sqrt(1 - rho ** 2) * rng.normal(0, 2, n)
    z = rng.random(n) < 0.5
    return x, y + effect * z, z


def test_cuped_reduces_variance_by_rho_squared_and_stays_unbiased():
    rng = np.random.default_rng(2)
    diffs, raw_diffs, reductions, cover = [], [], [], 0
    for _ in range(300):
        x, y, z = pre_post(rng, 2000, 0.2, 0.7)
        res = cuped(y[~z], x[~z], y[z], x[z])
        diffs.append(res.interval.diff)
        raw_diffs.append(res.unadjusted.diff)
        reductions.append(res.variance_reduction)
        cover += res.interval.low < 0.2 < res.interval.high
    assert np.mean(reductions) == pytest.approx(0.49, abs=0.02)
    assert np.mean(diffs) == pytest.approx(0.2, abs=3 * np.std(diffs) / math.sqrt(300))
    assert np.var(diffs) / np.var(raw_diffs) == pytest.approx(0.51, abs=0.1)
    assert stats.binomtest(cover, 300, 0.95).pvalue > 1e-3


def test_cuped_theta_by_hand_and_useless_covariate():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 4.1, 5.9, 8.0])
    assert cuped_theta(y, x) == pytest.approx(np.cov(x, y)[0, 1] / np.var(x, ddof=1))
    assert cuped_theta(y, np.ones(4)) == 0.0
    rng = np.random.default_rng(3)
    x, y, z = pre_post(rng, 4000, 0.0, 0.0)
    assert cuped(y[~z], x[~z], y[z], x[z]).variance_reduction < 0.01


def test_cs_radius_by_hand():
    alpha, t_star, t, sd = 0.05, 1000, 400, 2.0
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / t_star
    want = sd * math.sqrt(2 * (t * rho2 + 1) / (t ** 2 * rho2)
                          * math.log(math.sqrt(t * rho2 + 1) / alpha))
    assert cs_radius(np.array([t]), sd, alpha, t_star)[0] == pytest.approx(want)


def per_user_ctr(rng, n, lift=0.0, base=0.05):
    """Per-user CTR: heterogeneous propensities, 1 + Poisson(9) impressions each."""
    theta = base * rng.lognormal(-0.32, 0.8, n)
    imps = 1 + rng.poisson(9, n)
    z = rng.random(n) < 0.5
    clicks = rng.binomial(imps, np.minimum(theta * (1 + lift * z), 1.0))
    return clicks / imps, z


def test_confidence_sequence_is_valid_under_continuous_peeking():
    """A/A streams: the sequence excludes 0 at *any* time in at most about alpha of them;
    Welch looked at 20 times exceeds alpha (the reason to use the sequence)."""
    rng = np.random.default_rng(4)
    streams, n, alpha = 300, 4000, 0.05
    ever_cs = ever_welch = 0
    looks = np.linspace(200, n, 20).astype(int)
    for _ in range(streams):
        y, z = per_user_ctr(rng, n)
        lo, hi = confidence_sequence_path(y, z, alpha=alpha, t_star=n)
        ever_cs += bool(((lo[50:] > 0) | (hi[50:] < 0)).any())
        ever_welch += any(welch(y[:m][~z[:m]], y[:m][z[:m]]).p_value < alpha for m in looks)
    se = math.sqrt(alpha * (1 - alpha) / streams)
    assert ever_cs / streams <= alpha + 2 * se
    assert ever_welch / streams > alpha + 3 * se


def test_confidence_sequence_finds_a_real_effect_and_is_wider_than_welch():
    rng = np.random.default_rng(5)
    y, z = per_user_ctr(rng, 40_000, lift=0.15)
    iv = confidence_sequence(y, z, t_star=40_000)
    true_diff = 0.05 * 0.15
    assert iv.low > 0 and iv.low < true_diff < iv.high
    w = welch(y[~z], y[z])
    ratio = (iv.high - iv.low) / (w.high - w.low)
    assert 1.0 < ratio < 2.5


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    reject, p_adj = adjust(p, "holm")
    assert p_adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(reject) == [True, False, False, True]
    reject, p_adj = adjust(p, "fdr_bh")
    assert p_adj == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert list(reject) == [True, True, True, True]
    with pytest.raises(ValueError, match="method"):
        adjust(p, "bonferroni")


def test_srm_by_hand():
    ok = srm([5000, 5200], [0.5, 0.5])
    assert ok.chi2 == pytest.approx(2 * 100 ** 2 / 5100) and not ok.flagged
    bad = srm([5000, 5400], [0.5, 0.5])
    assert bad.chi2 == pytest.approx(2 * 200 ** 2 / 5200)
    assert bad.p_value == pytest.approx(stats.chi2.sf(bad.chi2, 1)) and bad.flagged
    assert not srm([1000, 2000, 7000], [0.1, 0.2, 0.7]).flagged
    with pytest.raises(ValueError, match="weights"):
        srm([1, 2], [0.5, 0.6])


def test_multiple_exposure():
    assert multiple_exposure([1, 1, 2, 3, 3, 3], ["a", "a", "b", "a", "b", "a"]) == \
        (3, 1, pytest.approx(1 / 3))


def iv(diff, low, high, p=None, n=1000, metric="ctr"):
    return Interval(diff, low, high, p, n // 2, n // 2, 0.05, 0.05 + diff, "test", metric)


def test_decide_every_branch():
    good, bad, flat = iv(0.01, 0.002, 0.018), iv(-0.01, -0.018, -0.002), iv(0.0, -0.01, 0.01)
    assert decide(good).action == SHIP and "excludes 0" in decide(good).reason
    assert decide(bad).action == STOP and "worse" in decide(bad).reason
    assert decide(flat).action == KEEP
    assert decide(good, higher_is_better=False).action == STOP
    assert decide(iv(0.01, 0.002, 0.018, n=50)).action == KEEP
    d = decide(good, srm_check=srm([5000, 5400], [0.5, 0.5]))
    assert d.action == STOP and "sample ratio mismatch" in d.reason
    harm = iv(-0.02, -0.03, -0.01, p=0.0001, metric="latency_ok")
    d = decide(good, guardrails=[harm, iv(0.0, -0.01, 0.01, p=0.9)])
    assert d.action == STOP and "latency_ok" in d.reason
    # One guardrail at p = 0.03 of three is not significant after Holm (0.09).
    mild = iv(-0.01, -0.02, -0.001, p=0.03, metric="g")
    assert decide(good, guardrails=[mild, iv(0, -1, 1, p=0.8), iv(0, -1, 1, p=0.9)]
                  ).action == SHIP
    d = decide(iv(0.0, -0.002, 0.003), min_effect=0.005)
    assert d.action == STOP and "futility" in d.reason
    d = decide(flat, planned_users=1000)
    assert d.action == STOP and "planned" in d.reason
