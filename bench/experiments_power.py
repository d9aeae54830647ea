"""Users needed for 80% power at a planted 2% relative CTR lift, A/B against team-draft
interleaving, and the A/A false-positive rate, on the simulated population of
models/experiment_sim.py (pure compute, seeded; no database).

For each design the users needed are computed from a large pilot (``--pilot`` users:
per-user variance of CTR for A/B, with and without CUPED; ``--il-pilot`` users for
interleaving: the mean and spread of the net wins per user for the wins test that the
analysis decides with, and for comparison the share of users with a preference and of
those preferring the better ranker, for a two-sided sign test) by the normal
approximation, then checked by
simulating ``--reps`` experiments of exactly that many users: the observed power should
be 0.80 within its simulation error.
The ratio depends on the population: the table at the end gives it for less and more
heterogeneous and active populations (formula only). The A/A rate is over
``--aa-reps`` experiments of ``--aa-users`` users. Last, the cost per request of
assignment, team-draft interleaving and exploration.

    .venv/bin/python -m bench.experiments_power [--lift 0.02] [--reps 200] [--aa-reps 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
from scipy import stats

from models.assignment import Experiment, Variant, assign
from models.experiment_sim import (
    PopulationConfig,
    population,
    simulate_ab,
    simulate_interleaving,
)
from models.experiment_stats import confidence_sequence, cuped, welch
from models.exploration import explore
from models.interleaving import (
    delta_from_counts,
    request_rng,
    sign_test,
    team_draft,
    wins_test,
)

ALPHA, POWER = 0.05, 0.80
Z_A, Z_B = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(POWER)


def ab_requirement(cfg: PopulationConfig, lift: float, pilot: int, seed: int) -> dict:
    """Users (both arms, 50/50) for Welch at 80% power, raw and with CUPED."""
    rng = np.random.default_rng(seed)
    s = simulate_ab(population(pilot, rng, cfg), 0.0, rng, treat_share=0.0)
    var, mean = float(s.ctr.var()), float(s.ctr.mean())
    rho2 = float(np.corrcoef(s.ctr, s.pre_ctr)[0, 1] ** 2)
    delta = lift * mean
    users = 2 * (Z_A + Z_B) ** 2 * 2 * var / delta ** 2
    return {"users": int(math.ceil(users)), "users_cuped": int(math.ceil(users * (1 - rho2))),
            "ctr": mean, "sd_user_ctr": math.sqrt(var), "cuped_variance_reduction": rho2}


def il_requirement(cfg: PopulationConfig, lift: float, pilot: int, seed: int,
                   chunk: int = 50_000) -> dict:
    """Users for the wins test (t-test over users of net wins, what the analysis decides
    with) and for a two-sided sign test over users' Δ, at 80% power (the pilot drawn in
    chunks of users to bound memory)."""
    rng = np.random.default_rng(seed)
    prefer_a = prefer_b = 0
    n = s1 = s2 = 0.0  # users with a clicked impression, sum and sum of squares of net wins
    for start in range(0, pilot, chunk):
        s = simulate_interleaving(population(min(chunk, pilot - start), rng, cfg), lift, rng)
        d = delta_from_counts(s.wins_a, s.wins_b, s.ties)
        prefer_b += int(np.nansum(d < 0))
        prefer_a += int(np.nansum(d > 0))
        x = (s.wins_b - s.wins_a)[s.wins_a + s.wins_b + s.ties > 0].astype("float64")
        n, s1, s2 = n + len(x), s1 + x.sum(), s2 + (x * x).sum()
    share = (prefer_a + prefer_b) / pilot
    p = prefer_b / (prefer_a + prefer_b)
    decided = ((Z_A * 0.5 + Z_B * math.sqrt(p * (1 - p))) / (p - 0.5)) ** 2
    se_p = math.sqrt(p * (1 - p) / (prefer_a + prefer_b))
    mean = s1 / n
    sd = math.sqrt(s2 / n - mean * mean)
    clicked = ((Z_A + Z_B) * sd / mean) ** 2
    return {"users": int(math.ceil(clicked / (n / pilot))),
            "share_with_clicks": n / pilot, "mean_net_wins": mean, "sd_net_wins": sd,
            "sign_test_users": int(math.ceil(decided / share)),
            "share_with_preference": share,
            "p_prefer_better": p, "p_prefer_better_se": se_p}


def ab_power(cfg: PopulationConfig, lift: float, n: int, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        s = simulate_ab(population(n, rng, cfg), lift, rng)
        iv = welch(s.ctr[s.treated == 0], s.ctr[s.treated == 1])
        hits += iv.p_value < ALPHA and iv.diff > 0
    return hits / reps


def il_power(cfg: PopulationConfig, lift: float, n: int, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        s = simulate_interleaving(population(n, rng, cfg), lift, rng)
        hits += wins_test(s.wins_a, s.wins_b, s.ties, ALPHA).winner == "B"
    return hits / reps


def aa_rates(cfg: PopulationConfig, n: int, reps: int, seed: int) -> dict:
    """Share of A/A experiments flagged, by each method."""
    rng = np.random.default_rng(seed)
    flagged = {"welch": 0, "cuped": 0, "confidence_sequence": 0, "interleaving_wins": 0,
               "interleaving_sign": 0}
    for _ in range(reps):
        pop = population(n, rng, cfg)
        s = simulate_ab(pop, 0.0, rng)
        z = s.treated == 1
        flagged["welch"] += welch(s.ctr[~z], s.ctr[z]).p_value < ALPHA
        flagged["cuped"] += cuped(s.ctr[~z], s.pre_ctr[~z], s.ctr[z],
                                  s.pre_ctr[z]).interval.p_value < ALPHA
        cs = confidence_sequence(s.ctr, z, alpha=ALPHA, t_star=n)
        flagged["confidence_sequence"] += cs.low > 0 or cs.high < 0
        il = simulate_interleaving(pop, 0.0, rng)
        d = delta_from_counts(il.wins_a, il.wins_b, il.ties)
        flagged["interleaving_sign"] += sign_test(d, ALPHA).winner is not None
        flagged["interleaving_wins"] += wins_test(il.wins_a, il.wins_b, il.ties,
                                                  ALPHA).winner is not None
    return {k: v / reps for k, v in flagged.items()}


def request_costs(n: int = 20_000) -> dict:
    """Microseconds per call: assign (3 experiments, 2 layers), team draft of two
    10-item lists (with its per-request generator), exploration of a 10-item list."""
    v = (Variant("control", 0.5), Variant("treatment", 0.5))
    exps = [Experiment("rank_a", "ranking", v, layer_range=(0, 0.5), status="running"),
            Experiment("rank_b", "ranking", v, layer_range=(0.5, 1), status="running"),
            Experiment("cands", "candidates", v, status="running")]
    a, b = list(range(10)), list(range(5, 15))
    out = {}
    t = time.perf_counter()
    for u in range(n):
        assign(u, exps)
    out["assign_us"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for u in range(n):
        team_draft(a, b, 10, request_rng(u, "r"))
    out["team_draft_us"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for u in range(n):
        explore(a, 5, 0.05, request_rng(u, "e"))
    out["explore_us"] = (time.perf_counter() - t) / n * 1e6
    return out


def run(*, lift: float = 0.02, pilot: int = 200_000, il_pilot: int = 1_000_000,
        reps: int = 200, aa_users: int = 10_000, aa_reps: int = 2000, seed: int = 0) -> dict:
    cfg = PopulationConfig()
    t0 = time.perf_counter()
    ab = ab_requirement(cfg, lift, pilot, seed)
    il = il_requirement(cfg, lift, il_pilot, seed + 1)
    se_power = math.sqrt(POWER * (1 - POWER) / reps)
    ab["power_at_users"] = ab_power(cfg, lift, ab["users"], reps, seed + 2)
    il["power_at_users"] = il_power(cfg, lift, il["users"], reps, seed + 3)
    sensitivity = []
    for name, c in [("less heterogeneous (s=0.5)", replace(cfg, heterogeneity=0.5)),
                    ("less active (5 impressions)", replace(cfg, mean_impressions=5.0)),
                    ("more heterogeneous and active (s=1.5, 50)",
                     replace(cfg, heterogeneity=1.5, mean_impressions=50.0))]:
        a = ab_requirement(c, lift, pilot // 2, seed + 10)["users"]
        req = il_requirement(c, lift, il_pilot // 2, seed + 11)
        i = req["users"]
        sensitivity.append({"population": name, "ab_users": a, "interleaving_users": i,
                            "ratio": a / i, "sign_test_users": req["sign_test_users"],
                            "ratio_sign_test": a / req["sign_test_users"]})
    aa = aa_rates(cfg, aa_users, aa_reps, seed + 4)
    return {"lift": lift, "population": cfg.__dict__, "ab": ab, "interleaving": il,
            "ratio": ab["users"] / il["users"], "power_se": se_power,
            "sensitivity": sensitivity, "aa_users": aa_users, "aa_reps": aa_reps,
            "aa_rates": aa, "aa_se": math.sqrt(ALPHA * (1 - ALPHA) / aa_reps),
            "request_costs": request_costs(), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lift", type=float, default=0.02)
    p.add_argument("--pilot", type=int, default=200_000)
    p.add_argument("--il-pilot", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--aa-users", type=int, default=10_000)
    p.add_argument("--aa-reps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    r = run(lift=a.lift, pilot=a.pilot, il_pilot=a.il_pilot, reps=a.reps,
            aa_users=a.aa_users, aa_reps=a.aa_reps, seed=a.seed)
    ab, il = r["ab"], r["interleaving"]
    print(f"planted lift {r['lift']:.0%} relative CTR; population {r['population']}")
    print(f"A/B (Welch on per-user CTR): {ab['users']:,} users for 80% power "
          f"(simulated power at that size {ab['power_at_users']:.3f} +- {r['power_se']:.3f}); "
          f"with CUPED {ab['users_cuped']:,} (variance -{ab['cuped_variance_reduction']:.0%})")
    print(f"team-draft interleaving (wins test over users): {il['users']:,} users "
          f"(simulated power {il['power_at_users']:.3f} +- {r['power_se']:.3f}); "
          f"net wins per user {il['mean_net_wins']:.4f} (sd {il['sd_net_wins']:.3f}); "
          f"with the sign test {il['sign_test_users']:,} users: "
          f"{il['share_with_preference']:.0%} of users have a preference, "
          f"{il['p_prefer_better']:.4f} +- {il['p_prefer_better_se']:.4f} of them prefer the "
          "better ranker")
    print(f"A/B needs {r['ratio']:.1f}x the users of interleaving (wins test; "
          f"{ab['users'] / il['sign_test_users']:.1f}x with the sign test)")
    for s in r["sensitivity"]:
        print(f"  {s['population']:<44} A/B {s['ab_users']:>9,}  interleaving "
              f"{s['interleaving_users']:>7,}  ratio {s['ratio']:5.1f}x (sign test "
              f"{s['sign_test_users']:,} users, {s['ratio_sign_test']:.1f}x)")
    print(f"A/A false-positive rate over {r['aa_reps']} experiments of {r['aa_users']:,} "
          f"users (alpha 0.05, simulation error +-{r['aa_se']:.4f}):")
    for k, v in r["aa_rates"].items():
        print(f"  {k:<22} {v:.4f}")
    c = r["request_costs"]
    print(f"per request: assign {c['assign_us']:.1f} us, team draft {c['team_draft_us']:.1f} "
          f"us, exploration {c['explore_us']:.1f} us")
    print(f"took {r['seconds']:.0f} s")
    print(json.dumps(r, indent=2, default=float))


if __name__ == "__main__":
    main()
