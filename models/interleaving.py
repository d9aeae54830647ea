"""Team-draft interleaving and multileaving, click credit and the per-user preference test
(pure compute).

Team-draft interleaving (Radlinski, Kurup and Joachims, "How does clickthrough data
reflect retrieval quality?", CIKM 2008): the rankers are teams picking players. In each
round the team with fewer picks so far goes next, a seeded coin deciding when they are
level, and picks its highest-ranked item not already shown; the item is credited to that
team. A click credits the team that contributed the clicked item; an impression is won by
the team with more clicks. Multileaving (Schuth et al., "Multileaved comparisons for fast
online evaluation", CIKM 2014) is the same draft over more than two rankers: the team with
the fewest picks goes next, ties broken by the seeded generator.

Each request gets its own generator seeded from (user id, request id), so a response can
be rebuilt exactly from the log. ``random.Random`` is used rather than numpy's generator
because it is much cheaper to create per request; its integer seeding is stable across
processes and platforms.

Per user: Δ = (wins_A + ties / 2) / (wins_A + wins_B + ties) - 0.5 over the user's
impressions that got at least one click (an impression without clicks says nothing about
either ranker and is left out). The decision is the wins test: a t-test over users of the
net wins per user (wins_A - wins_B), i.e. the per-impression credit with the user as the
unit of resampling, so an active user weighs by the impressions they decided and the
standard error stays valid however many impressions one user has. Reported beside it: the
sign test over users (binomial test of the users with Δ > 0 against Δ < 0; it gives every
user one vote, whatever their number of impressions, and needs about 1.6x the users on the
simulated population of models/experiment_sim.py) and a seeded bootstrap interval of mean
Δ.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

TEAM_A, TEAM_B = 0, 1


def request_rng(user_id: str | int, request_id: str | int) -> random.Random:
    """The generator of one request, seeded from the user and request ids."""
    digest = hashlib.blake2b(f"{user_id}\x1f{request_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class Interleaved:
    """The shown list and, per position, the index of the team that contributed it."""

    items: tuple[Hashable, ...]
    teams: tuple[int, ...]


def multileave(rankings: Sequence[Sequence[Hashable]], k: int,
               rng: random.Random) -> Interleaved:
    """Team-draft multileaving of ``rankings`` into at most ``k`` distinct items.

    The team with the fewest picks goes next (ties broken by ``rng``) and takes its
    highest-ranked item not yet shown; a team with nothing left to add drops out. Stops at
    ``k`` items or when every ranking is used up.
    """
    if k < 0:
        raise ValueError(f"k: {k} must be >= 0")
    n = len(rankings)
    pointers = [0] * n
    picks = [0] * n
    active = [bool(r) for r in rankings]
    shown: set = set()
    items: list = []
    teams: list[int] = []
    while len(items) < k and any(active):
        fewest = min(picks[t] for t in range(n) if active[t])
        tied = [t for t in range(n) if active[t] and picks[t] == fewest]
        team = tied[0] if len(tied) == 1 else tied[rng.randrange(len(tied))]
        ranking, p = rankings[team], pointers[team]
        while p < len(ranking) and ranking[p] in shown:
            p += 1
        pointers[team] = p
        if p == len(ranking):
            active[team] = False
            continue
        items.append(ranking[p])
        shown.add(ranking[p])
        teams.append(team)
        picks[team] += 1
        pointers[team] = p + 1
    return Interleaved(tuple(items), tuple(teams))


def team_draft(a: Sequence[Hashable], b: Sequence[Hashable], k: int,
               rng: random.Random) -> Interleaved:
    """Team-draft interleaving of rankings ``a`` (team 0) and ``b`` (team 1)."""
    return multileave([a, b], k, rng)


def credit(teams: Sequence[int], clicked: Sequence[bool], n_teams: int = 2) -> list[int]:
    """Clicks credited to each team in one impression (``clicked`` per position)."""
    if len(teams) != len(clicked):
        raise ValueError(f"clicked: {len(clicked)} positions for {len(teams)} shown items")
    out = [0] * n_teams
    for t, c in zip(teams, clicked, strict=True):
        if c:
            out[t] += 1
    return out


def outcome(teams: Sequence[int], clicked: Sequence[bool]) -> int | None:
    """One impression of two teams: +1 when A got more clicks, -1 when B did, 0 for a tie
    with clicks, None when nothing was clicked."""
    ca, cb = credit(teams, clicked, 2)
    if ca + cb == 0:
        return None
    return (ca > cb) - (ca < cb)


@dataclass(frozen=True)
class Preferences:
    """Per user (sorted by id): wins of A, wins of B, ties, and Δ."""

    users: np.ndarray
    wins_a: np.ndarray
    wins_b: np.ndarray
    ties: np.ndarray
    delta: np.ndarray


def user_preferences(user_ids: Sequence, outcomes: Sequence[int | None]) -> Preferences:
    """Δ per user from impression outcomes (+1 / -1 / 0 / None); users with no clicked
    impression are left out."""
    uid = np.asarray(user_ids)
    o = np.array([np.nan if x is None else x for x in outcomes], dtype="float64")
    if len(uid) != len(o):
        raise ValueError(f"outcomes: {len(o)} for {len(uid)} user ids")
    keep = ~np.isnan(o)
    uid, o = uid[keep], o[keep]
    users, inv = np.unique(uid, return_inverse=True)
    wa = np.bincount(inv, weights=o == 1, minlength=len(users))
    wb = np.bincount(inv, weights=o == -1, minlength=len(users))
    ties = np.bincount(inv, weights=o == 0, minlength=len(users))
    return Preferences(users, wa.astype("int64"), wb.astype("int64"), ties.astype("int64"),
                       delta_from_counts(wa, wb, ties))


def delta_from_counts(wins_a: np.ndarray, wins_b: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Δ = (wins_A + ties/2) / (wins_A + wins_B + ties) - 0.5 (NaN for no impressions)."""
    wa, wb, t = (np.asarray(x, dtype="float64") for x in (wins_a, wins_b, ties))
    total = wa + wb + t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (wa + t / 2) / total - 0.5, np.nan)


@dataclass(frozen=True)
class SignTest:
    """Users preferring A, preferring B, the two-sided p-value and the winner
    (``"A"``, ``"B"`` or None when p >= alpha)."""

    prefer_a: int
    prefer_b: int
    p_value: float
    winner: str | None


def sign_test(delta: np.ndarray, alpha: float = 0.05) -> SignTest:
    """Sign test over users: users with Δ > 0 against Δ < 0 (Δ = 0 left out)."""
    d = np.asarray(delta, dtype="float64")
    d = d[~np.isnan(d)]
    pa, pb = int((d > 0).sum()), int((d < 0).sum())
    if pa + pb == 0:
        return SignTest(pa, pb, 1.0, None)
    p = float(stats.binomtest(pa, pa + pb, 0.5).pvalue)
    winner = None if p >= alpha else ("A" if pa > pb else "B")
    return SignTest(pa, pb, p, winner)


@dataclass(frozen=True)
class WinsTest:
    """The mean net wins per user (wins_A - wins_B over the users with at least one
    clicked impression), its t statistic, the two-sided p-value and the winner (``"A"``,
    ``"B"`` or None when p >= alpha)."""

    users: int
    mean_net_wins: float
    t: float
    p_value: float
    winner: str | None


def wins_test(wins_a: np.ndarray, wins_b: np.ndarray, ties: np.ndarray,
              alpha: float = 0.05) -> WinsTest:
    """One-sample t-test of ``wins_a - wins_b`` per user against 0 (scipy's
    ``ttest_1samp``), over the users with at least one clicked impression."""
    wa, wb, t = (np.asarray(x, dtype="float64") for x in (wins_a, wins_b, ties))
    x = (wa - wb)[wa + wb + t > 0]
    n = len(x)
    if n < 2 or not np.any(x):
        return WinsTest(n, float(x.mean()) if n else float("nan"), 0.0, 1.0, None)
    if np.all(x == x[0]):  # no spread: every user net-preferred the same side equally
        return WinsTest(n, float(x[0]), math.copysign(math.inf, x[0]), 0.0,
                        "A" if x[0] > 0 else "B")
    res = stats.ttest_1samp(x, 0.0)
    p, mean = float(res.pvalue), float(x.mean())
    winner = None if p >= alpha else ("A" if mean > 0 else "B")
    return WinsTest(n, mean, float(res.statistic), p, winner)


def bootstrap_ci(delta: np.ndarray, alpha: float = 0.05, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean Δ over users and its percentile bootstrap interval (users resampled)."""
    d = np.asarray(delta, dtype="float64")
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(0, n_boot, 256):  # chunks keep memory at 256 * len(d)
        m = min(256, n_boot - i)
        means[i:i + m] = d[rng.integers(0, len(d), size=(m, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)
