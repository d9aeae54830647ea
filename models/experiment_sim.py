"""A simulated user population with a planted difference between two rankers, for checking
the experiment statistics against a known truth (pure compute, seeded, vectorised).

The model:

- user ``u`` has a click propensity ``theta_u = base_ctr * LogNormal(-s^2/2, s)`` (mean
  ``base_ctr``, heterogeneity ``s``) and sees ``m_u`` impressions in the experiment
  (``1 + Poisson(Gamma)``: a heavy tail of active users, mean ``mean_impressions``);
- an impression is a list of ``k`` slots; the click probability at position ``p`` of an
  item of attractiveness ``a`` is ``theta_u * a * v_p / mean(v)``, with the position bias
  ``v_p = 1 / log2(p + 2)``, so ``theta_u`` is the user's CTR per slot;
- ranker A's items have attractiveness 1, ranker B's ``1 + lift``: B's lists have a CTR
  exactly ``lift`` higher (relative) at every position and for every user (up to the rare
  user whose probability is clipped at 1). The two lists are disjoint, so in an
  interleaved list each slot's attractiveness is its team's;
- interleaving: team-draft over two disjoint lists puts one item of each team in every
  pair of positions, the coin choosing which goes first, which is what the vectorised
  path below draws (tests/test_experiment_simulation.py checks it against the real
  models.interleaving.team_draft).

The A/B metric is per-user CTR (clicks / (impressions * k)); the pre-period metric for
CUPED is the same user's CTR over an independent pre-period with the control ranker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PopulationConfig:
    """Parameters of the simulated population."""

    base_ctr: float = 0.03
    heterogeneity: float = 1.0
    mean_impressions: float = 20.0
    impressions_shape: float = 1.0
    k: int = 10


@dataclass(frozen=True)
class Population:
    theta: np.ndarray        # per-user CTR per slot
    impressions: np.ndarray  # impressions in the experiment
    pre_impressions: np.ndarray
    config: PopulationConfig

    @property
    def n(self) -> int:
        return len(self.theta)


def position_bias(k: int) -> np.ndarray:
    """``v_p / mean(v)`` for ``v_p = 1 / log2(p + 2)``."""
    v = 1.0 / np.log2(np.arange(k) + 2.0)
    return v / v.mean()


def population(n: int, rng: np.random.Generator,
               config: PopulationConfig = PopulationConfig()) -> Population:
    """``n`` simulated users."""
    s = config.heterogeneity
    theta = config.base_ctr * rng.lognormal(-s * s / 2, s, n)

    def activity() -> np.ndarray:
        lam = rng.gamma(config.impressions_shape,
                        (config.mean_impressions - 1) / config.impressions_shape, n)
        return 1 + rng.poisson(lam)

    return Population(theta, activity(), activity(), config)


def _clicks(theta: np.ndarray, impressions: np.ndarray, attract: np.ndarray,
            k: int, rng: np.random.Generator) -> np.ndarray:
    """Clicks per user over their impressions; ``attract`` per user (scalar per list)."""
    p = np.minimum(theta[:, None] * attract[:, None] * position_bias(k)[None, :], 1.0)
    return rng.binomial(impressions[:, None], p).sum(axis=1)


@dataclass(frozen=True)
class ABSample:
    """Per user: treated (0/1), per-user CTR in the experiment and in the pre-period."""

    treated: np.ndarray
    ctr: np.ndarray
    pre_ctr: np.ndarray


def simulate_ab(pop: Population, lift: float, rng: np.random.Generator,
                treat_share: float = 0.5, drop_silent_treated: float = 0.0) -> ABSample:
    """An A/B test: each user is served A or B for all their impressions.

    ``drop_silent_treated`` plants a logging bug: that share of treated users with no
    click lose their exposures and vanish from the analysis (a sample-ratio mismatch).
    """
    k = pop.config.k
    z = rng.random(pop.n) < treat_share
    clicks = _clicks(pop.theta, pop.impressions, np.where(z, 1.0 + lift, 1.0), k, rng)
    pre = _clicks(pop.theta, pop.pre_impressions, np.ones(pop.n), k, rng)
    keep = np.ones(pop.n, dtype=bool)
    if drop_silent_treated > 0:
        keep = ~(z & (clicks == 0) & (rng.random(pop.n) < drop_silent_treated))
    ctr = clicks / (pop.impressions * k)
    pre_ctr = pre / (pop.pre_impressions * k)
    return ABSample(z[keep].astype("int64"), ctr[keep], pre_ctr[keep])


@dataclass(frozen=True)
class InterleavingSample:
    """Per user: impressions won by A, by B, tied (with clicks)."""

    wins_a: np.ndarray
    wins_b: np.ndarray
    ties: np.ndarray


def simulate_interleaving(pop: Population, lift: float,
                          rng: np.random.Generator) -> InterleavingSample:
    """Team-draft interleaving of A and B for every impression of every user."""
    k = pop.config.k
    user = np.repeat(np.arange(pop.n), pop.impressions)
    n_imp = len(user)
    rounds = (k + 1) // 2
    a_first = rng.random((n_imp, rounds)) < 0.5
    team_b = np.empty((n_imp, 2 * rounds), dtype=bool)
    team_b[:, 0::2] = ~a_first
    team_b[:, 1::2] = a_first
    team_b = team_b[:, :k]
    p = pop.theta[user][:, None] * position_bias(k)[None, :] * np.where(team_b, 1 + lift, 1)
    clicked = rng.random((n_imp, k)) < np.minimum(p, 1.0)
    cb = (clicked & team_b).sum(axis=1)
    ca = (clicked & ~team_b).sum(axis=1)
    n = pop.n
    wa = np.bincount(user, weights=ca > cb, minlength=n).astype("int64")
    wb = np.bincount(user, weights=cb > ca, minlength=n).astype("int64")
    ties = np.bincount(user, weights=(ca == cb) & (ca > 0), minlength=n).astype("int64")
    return InterleavingSample(wa, wb, ties)
