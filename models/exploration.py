"""A small exploration policy over ranked lists and off-policy estimators (pure compute).

Exploration: with probability ``epsilon`` the top ``k`` items of a ranking are shown in a
uniformly random order, otherwise in the ranking's order; the rest of the list is never
moved. Under this logging policy the item ranked ``q`` (``q < k``) is shown at position
``p < k`` with probability ``(1 - epsilon) * [p == q] + epsilon / k``, and every item past
the top ``k`` at its own position with probability 1. That probability is the item's
*propensity*, logged with the impression; it is the same whether or not this request was
shuffled, since it is a property of the policy.

Off-policy estimators (the value a *target* policy would have had, from a log gathered by
another policy):

- contextual-bandit form, one action per logged row with its propensity ``p`` and the
  target's probability ``pi`` of that action: IPS ``mean(w r)`` with ``w = pi / p``;
  SNIPS ``sum(w r) / sum(w)`` (Swaminathan and Joachims, NeurIPS 2015), biased by
  O(1/n) but with much lower variance; doubly robust ``mean(q_pi + w (r - q_a))`` with a
  reward model ``q`` (Dudík, Langford and Li, ICML 2011): unbiased when the
  propensities are right, whatever the model, and low-variance when the model is good;
- ranked lists under the item-position click model (a click at a position depends only
  on the item there and the position): per position, the logged clicks where the
  logging policy happened to show the target's item, weighted by 1 / propensity
  (Li et al., "Counterfactual estimation and optimization of click metrics in search
  engines", WWW 2015). This needs the target's item at each position to have a non-zero
  propensity: inside the explored top ``k`` that is at least ``epsilon / k``.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Explored:
    """The shown list, each position's propensity, and whether it was shuffled."""

    items: tuple[Hashable, ...]
    propensities: tuple[float, ...]
    explored: bool


def position_propensity(ranked_at: int, shown_at: int, k: int, epsilon: float) -> float:
    """Probability that the item ranked ``ranked_at`` is shown at ``shown_at``."""
    if ranked_at >= k or shown_at >= k:
        return float(ranked_at == shown_at)
    return (1.0 - epsilon) * (ranked_at == shown_at) + epsilon / k


def explore(ranking: Sequence[Hashable], k: int, epsilon: float,
            rng: random.Random) -> Explored:
    """Show ``ranking``, its top ``k`` shuffled with probability ``epsilon``."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon: {epsilon!r} must be in [0, 1]")
    if k < 0:
        raise ValueError(f"k: {k} must be >= 0")
    items = list(ranking)
    top = min(k, len(items))
    order = list(range(len(items)))
    shuffled = top > 1 and rng.random() < epsilon
    if shuffled:
        head = order[:top]
        rng.shuffle(head)
        order[:top] = head
    props = tuple(position_propensity(q, p, top, epsilon) for p, q in enumerate(order))
    return Explored(tuple(items[q] for q in order), props, shuffled)


@dataclass(frozen=True)
class Estimate:
    """An off-policy estimate, its standard error, the rows used and the effective sample
    size of the weights ``(sum w)^2 / sum w^2``."""

    value: float
    se: float
    n: int
    ess: float


def _arrays(*xs) -> list[np.ndarray]:
    out = [np.asarray(x, dtype="float64") for x in xs]
    n = len(out[0])
    for a in out:
        if a.shape != (n,):
            raise ValueError(f"arrays must be one-dimensional of one length; got {a.shape}")
    if (out[1] <= 0).any() or (out[1] > 1).any():
        raise ValueError("propensities must be in (0, 1]")
    return out


def _ess(w: np.ndarray) -> float:
    s2 = float((w ** 2).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def ips(rewards, propensities, target_probs) -> Estimate:
    """Inverse propensity scoring: ``mean(pi / p * r)``."""
    r, p, pi = _arrays(rewards, propensities, target_probs)
    terms = pi / p * r
    return Estimate(float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(len(r))),
                    len(r), _ess(pi / p))


def snips(rewards, propensities, target_probs) -> Estimate:
    """Self-normalised IPS ``sum(w r) / sum(w)``; standard error by the delta method."""
    r, p, pi = _arrays(rewards, propensities, target_probs)
    w = pi / p
    total = w.sum()
    if total <= 0:
        return Estimate(float("nan"), float("nan"), len(r), 0.0)
    v = float((w * r).sum() / total)
    se = float(np.sqrt(((w * (r - v)) ** 2).sum()) / total)
    return Estimate(v, se, len(r), _ess(w))


def doubly_robust(rewards, propensities, target_probs, q_logged, q_target) -> Estimate:
    """Doubly robust: ``mean(q_target + pi / p * (r - q_logged))``.

    ``q_logged`` is the reward model's prediction for the logged action, ``q_target`` its
    expectation under the target policy in that row's context,
    ``sum_a pi(a | x) q(x, a)``.
    """
    r, p, pi, ql, qt = _arrays(rewards, propensities, target_probs, q_logged, q_target)
    w = pi / p
    terms = qt + w * (r - ql)
    return Estimate(float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(len(r))),
                    len(r), _ess(w))


def item_position_ips(shown: np.ndarray, propensities: np.ndarray, clicks: np.ndarray,
                      target: np.ndarray, self_normalised: bool = False) -> Estimate:
    """Expected clicks per impression of a target ranking, from explored impressions.

    All arrays are ``(n_impressions, n_positions)``: the shown item ids, their logged
    propensities, the clicks (0/1) and the item the target would show at each position.
    Self-normalised: each position's weights are divided by their mean.
    """
    shown, target = np.asarray(shown), np.asarray(target)
    p = np.asarray(propensities, dtype="float64")
    c = np.asarray(clicks, dtype="float64")
    if not (shown.shape == target.shape == p.shape == c.shape and shown.ndim == 2):
        raise ValueError("shown, propensities, clicks and target must share one 2-D shape")
    if (p <= 0).any():
        raise ValueError("propensities must be > 0")
    w = (shown == target) / p
    if self_normalised:
        mean_w = w.mean(axis=0)
        w = np.divide(w, mean_w, out=np.zeros_like(w), where=mean_w > 0)
    per_impression = (w * c).sum(axis=1)
    n = len(per_impression)
    return Estimate(float(per_impression.mean()), float(per_impression.std(ddof=1) / np.sqrt(n)),
                    n, _ess(w.ravel()))
