"""Simulations with a known truth (models/experiment_sim.py): a planted CTR lift is found
with the power the design predicts, A/A experiments are flagged at about alpha, a planted
sample-ratio bug is caught and stops the experiment, and team-draft interleaving through
the real code reaches the decision with far fewer users than A/B on the same planted
difference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats

from models.experiment_sim import (
    PopulationConfig,
    population,
    position_bias,
    simulate_ab,
    simulate_interleaving,
)
from models.experiment_stats import STOP, confidence_sequence, cuped, decide, srm, welch
from models.interleaving import (
    outcome,
    request_rng,
    sign_test,
    team_draft,
    user_preferences,
    wins_test,
)

Z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
CFG = PopulationConfig()


def ab_users_for_power(lift: float, seed: int = 0) -> int:
    """Users (both arms) for 80% power at alpha 0.05, from a pilot's per-user variance."""
    rng = np.random.default_rng(seed)
    pilot = simulate_ab(population(100_000, rng, CFG), 0.0, rng, treat_share=0.0)
    delta = lift * pilot.ctr.mean()
    return int(math.ceil(2 * Z ** 2 * 2 * pilot.ctr.var() / delta ** 2))


def test_the_planted_lift_is_the_realised_lift():
    rng = np.random.default_rng(1)
    s = simulate_ab(population(200_000, rng, CFG), 0.10, rng)
    t, c = s.ctr[s.treated == 1], s.ctr[s.treated == 0]
    iv = welch(c, t)
    assert iv.low / c.mean() < 0.10 < iv.high / c.mean()


def test_ab_detects_a_planted_lift_with_the_expected_power():
    lift, reps = 0.10, 120
    n = ab_users_for_power(lift)
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(reps):
        s = simulate_ab(population(n, rng, CFG), lift, rng)
        iv = welch(s.ctr[s.treated == 0], s.ctr[s.treated == 1])
        hits += iv.p_value < 0.05 and iv.diff > 0
    se = math.sqrt(0.8 * 0.2 / reps)
    assert abs(hits / reps - 0.8) < 3 * se, (hits, reps, n)


def test_aa_is_flagged_no_more_often_than_alpha():
    reps, alpha, n = 600, 0.05, 3000
    rng = np.random.default_rng(3)
    flagged = {"welch": 0, "cuped": 0, "sequence": 0}
    for _ in range(reps):
        s = simulate_ab(population(n, rng, CFG), 0.0, rng)
        z = s.treated == 1
        flagged["welch"] += welch(s.ctr[~z], s.ctr[z]).p_value < alpha
        flagged["cuped"] += cuped(s.ctr[~z], s.pre_ctr[~z], s.ctr[z],
                                  s.pre_ctr[z]).interval.p_value < alpha
        cs = confidence_sequence(s.ctr, z, t_star=n)
        flagged["sequence"] += cs.low > 0 or cs.high < 0
    se = math.sqrt(alpha * (1 - alpha) / reps)
    for name in ("welch", "cuped"):
        assert abs(flagged[name] / reps - alpha) < 3 * se, (name, flagged)
    assert flagged["sequence"] / reps < alpha + 3 * se, flagged


def test_a_planted_sample_ratio_bug_is_caught_and_stops_the_experiment():
    rng = np.random.default_rng(4)
    pop = population(20_000, rng, CFG)
    bugged = simulate_ab(pop, 0.0, rng, drop_silent_treated=0.3)
    counts = np.bincount(bugged.treated, minlength=2)
    check = srm(counts, [0.5, 0.5])
    assert check.flagged
    z = bugged.treated == 1
    # 30% of the treated users without a click lose their exposures (about 3% of B):
    # the bug fakes a lift (silent users vanish from B); the SRM check stops it first.
    primary = welch(bugged.ctr[~z], bugged.ctr[z], metric="ctr")
    assert primary.low > 0
    d = decide(primary, srm_check=check)
    assert d.action == STOP and "sample ratio mismatch" in d.reason
    clean = [srm(np.bincount(simulate_ab(population(5_000, rng, CFG), 0.0, rng).treated,
                             minlength=2), [0.5, 0.5]).flagged for _ in range(200)]
    assert sum(clean) <= 2


def interleave_through_the_real_code(n_users: int, lift: float, seed: int):
    """Every impression drafted by models.interleaving.team_draft with its request's
    seed, clicks drawn from the same click model as models.experiment_sim."""
    rng = np.random.default_rng(seed)
    pop = population(n_users, rng, CFG)
    k = CFG.k
    bias = position_bias(k)
    a = [("a", i) for i in range(k)]
    b = [("b", i) for i in range(k)]
    g = random.Random(seed)
    users, outs = [], []
    for u in range(n_users):
        for j in range(int(pop.impressions[u])):
            r = team_draft(a, b, k, request_rng(f"{seed}:{u}", j))
            clicked = [g.random() < pop.theta[u] * bias[p] * (1 + lift if t else 1.0)
                       for p, t in enumerate(r.teams)]
            users.append(u)
            outs.append(outcome(r.teams, clicked))
    return user_preferences(users, outs)


def test_vectorised_interleaving_matches_the_real_draft():
    lift = 0.3
    real = interleave_through_the_real_code(1500, lift, seed=5)
    rng = np.random.default_rng(5)
    vec = simulate_interleaving(population(1500, rng, CFG), lift, rng)
    per_user = [(real.wins_b - real.wins_a, real.ties),
                (vec.wins_b - vec.wins_a, vec.ties)]
    for i in range(2):
        x, y = per_user[0][i], per_user[1][i]
        se = math.sqrt(x.var() / len(real.users) + y.var() / len(vec.ties))
        assert abs(x.sum() / len(real.users) - y.mean()) < 4 * se


def test_interleaving_decides_with_far_fewer_users_than_ab():
    """Same planted lift (15%), same users: interleaving through the real draft and the
    wins test (what the analysis decides with) finds B better in most runs, and so does
    the sign test; an A/B test of the same users rarely does."""
    lift, n, runs = 0.15, 400, 16
    il_hits = sign_hits = ab_hits = 0
    for seed in range(runs):
        prefs = interleave_through_the_real_code(n, lift, seed=100 + seed)
        il_hits += wins_test(prefs.wins_a, prefs.wins_b, prefs.ties).winner == "B"
        sign_hits += sign_test(prefs.delta).winner == "B"
        rng = np.random.default_rng(100 + seed)
        s = simulate_ab(population(n, rng, CFG), lift, rng)
        iv = welch(s.ctr[s.treated == 0], s.ctr[s.treated == 1])
        ab_hits += iv.p_value < 0.05 and iv.diff > 0
    assert il_hits >= 0.75 * runs and ab_hits <= 0.35 * runs, (il_hits, ab_hits)
    assert sign_hits >= 0.5 * runs, sign_hits
    # For 80% power the A/B test needs several times these users (about 3,000).
    assert ab_users_for_power(lift) > 5 * n


@pytest.mark.parametrize("lift", [0.0])
def test_interleaving_aa_has_no_winner_more_than_alpha(lift):
    rng = np.random.default_rng(6)
    reps, flagged, flagged_wins = 400, 0, 0
    for _ in range(reps):
        s = simulate_interleaving(population(500, rng, CFG), lift, rng)
        d = (s.wins_a + s.ties / 2) / np.maximum(s.wins_a + s.wins_b + s.ties, 1) - 0.5
        d = np.where(s.wins_a + s.wins_b + s.ties > 0, d, np.nan)
        flagged += sign_test(d).winner is not None
        flagged_wins += wins_test(s.wins_a, s.wins_b, s.ties).winner is not None
    se = math.sqrt(0.05 * 0.95 / reps)
    assert flagged / reps < 0.05 + 3 * se
    assert abs(flagged_wins / reps - 0.05) < 3 * se, flagged_wins
