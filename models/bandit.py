"""Thompson sampling over new items (Beta-Bernoulli), seeded per run (pure compute).

Each arm (a new item) has a Beta(1 + clicks, 1 + misses) posterior over its engagement
rate, misses = impressions - clicks. Every free slot draws one sample per candidate arm
and goes to the highest draw: an item that engages often wins most slots, an item with
few impressions still wins some while its posterior is wide (exploration), and a poor
item fades out as its impressions grow. The caller passes a generator seeded from the run,
so the same run gives the same choices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def posterior(impressions: np.ndarray, clicks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters (a, b) of each arm; clicks above impressions count as impressions."""
    imp = np.asarray(impressions, dtype="float64")
    clk = np.asarray(clicks, dtype="float64")
    if (imp < 0).any() or (clk < 0).any():
        raise ValueError("impressions and clicks must be non-negative")
    return 1.0 + clk, 1.0 + (np.maximum(imp, clk) - clk)


def posterior_mean(impressions: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """Expected engagement rate of each arm under its posterior."""
    a, b = posterior(impressions, clicks)
    return a / (a + b)


def sample(impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator,
           n_draws: int) -> np.ndarray:
    """``(n_draws, n_arms)`` posterior samples (one row per slot to fill)."""
    a, b = posterior(impressions, clicks)
    return rng.beta(a, b, size=(n_draws, len(a)))


def choose(candidates: Sequence[np.ndarray], impressions: np.ndarray, clicks: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """For each slot, the arm (index into the arrays) with the highest draw among that
    slot's ``candidates`` (arm indices); -1 where a slot has no candidate.

    Slots are drawn in order, so the result depends only on the inputs and the
    generator's seed.
    """
    out = np.full(len(candidates), -1, dtype="int64")
    if len(candidates) == 0 or len(impressions) == 0:
        return out
    draws = sample(impressions, clicks, rng, len(candidates))
    for slot, arms in enumerate(candidates):
        arms = np.asarray(arms, dtype="int64")
        if len(arms):
            out[slot] = arms[int(np.argmax(draws[slot, arms]))]
    return out


def run_rng(seed: int, run_key: int) -> np.random.Generator:
    """The generator of one run: the project seed and a key of the run (its time)."""
    return np.random.default_rng([int(seed), int(run_key)])
